"""Video sources: decode a file, an RTSP camera, a webcam or a folder of images into `Frame`s.

Each source runs one reader thread that decodes into a bounded queue:

* files and folders never lose a frame: when the consumer is slower the reader blocks (back-pressure);
* live sources (``rtsp://``, ``webcam:N``) drop the OLDEST queued frames instead, so the consumer
  always sees recent video; ``stats.dropped`` counts them. RTSP reconnects with exponential
  back-off when the stream is lost (``stats.reconnects``). A live source that has not delivered its
  first frame within ``first_frame_timeout`` fails instead (a wrong address must not retry forever);
  the failure comes at most about one ``open_timeout`` / ``read_timeout`` after the deadline.

A folder is read either as unrelated photos or as the frames of one video (``source.folder_mode``,
``VideoSource.folder_mode``); each of its frames carries its image's file name (``Frame.source_file``).

``Frame.index`` counts decoded frames from 0, across reconnects. ``Frame.pts_time`` is the
stream's presentation time in seconds (None when unknown, e.g. the first RTSP frame; it restarts
after an RTSP reconnect, so order frames by ``index``). Problems the user can fix (missing file,
not a video, camera unreachable after all attempts) raise `SourceError` with a one-line message,
from `open_source` or from the iteration that hits them.

Example::

    from pipeline.source import SourceConfig, open_source

    with open_source("rtsp://127.0.0.1:8554/stream", SourceConfig(queue_size=8)) as src:
        for frame in src:                       # Frame(index, pts_time, image HxWx3 BGR, source_id)
            process(frame.image)
        print(src.stats)                        # decoded, delivered, dropped, reconnects, errors
"""
from __future__ import annotations

import collections
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

from common import qp
from common.noise import TemporalNoise
from common.frames import to_bgr
from common.config import setting, validate
from common.redact import mask_secrets
from pipeline.errors import SourceError
from pipeline.files import IMAGE_SUFFIXES, is_image_file
from pipeline.records import Frame

log = logging.getLogger(__name__)



@dataclass
class SourceConfig:
    queue_size: int = setting(64, lo=1)
    # Consecutive failed (re)connection attempts allowed before giving up.
    # None: unlimited for live sources (a camera may come back), 0 for files and folders.
    reconnect_attempts: int | None = setting(None, lo=0)
    backoff_initial: float = setting(0.5, lo=0.0)  # seconds before the first retry, doubled per failure
    backoff_max: float = setting(10.0, lo=0.0)
    open_timeout: float = setting(5.0, gt=0.0)  # seconds to connect / open
    read_timeout: float = setting(5.0, gt=0.0)  # seconds without data before a live stream counts as lost
    # Live sources: seconds to wait for the FIRST frame (None: forever). A camera that has never
    # delivered is most likely a wrong address, so it fails; once it has delivered, it reconnects
    # as `reconnect_attempts` allows.
    first_frame_timeout: float | None = setting(30.0, gt=0.0)
    fps_hint: float | None = setting(None, gt=0.0)  # folders: pts_time = index / fps_hint (None: pts_time None)
    # Folders: "photos" (unrelated images: nothing is tracked from one to the next), "sequence" (the
    # frames of a video), or "auto": a sequence when the names are numbered frames (see `is_frame_sequence`).
    folder_mode: str = setting("auto", choices=("auto", "photos", "sequence"))
    # TCP: no UDP packet loss / NAT trouble on CCTV networks; the others are FFmpeg's rtsp_transport values
    rtsp_transport: str = setting("tcp", choices=("tcp", "udp", "udp_multicast", "http", "https"))
    options: dict[str, str] = setting(factory=dict)  # extra FFmpeg options (e.g. video_size)

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class SourceStats:
    decoded: int = 0  # frames decoded (== next Frame.index)
    delivered: int = 0  # frames handed to the consumer
    dropped: int = 0  # live sources only: oldest frames discarded because the consumer lagged
    reconnects: int = 0  # successful re-connections after a lost live stream
    errors: int = 0  # corrupt packets skipped, failed connection attempts


class FrameQueue:
    """Bounded FIFO between the reader thread and the consumer.

    ``drop_oldest=True`` (live): a put on a full queue discards the oldest item and never blocks.
    ``drop_oldest=False`` (files): a put on a full queue waits (back-pressure) until there is room
    or the queue is closed. ``finish()`` marks the end of input; ``close()`` also discards what is left.
    """

    def __init__(self, maxsize: int, drop_oldest: bool) -> None:
        if maxsize < 1:
            raise ValueError("queue size must be >= 1")
        self.maxsize, self.drop_oldest = maxsize, drop_oldest
        self.dropped = 0
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._finished = self._closed = False

    def put(self, item: object) -> bool:
        """Add an item; False if the queue was closed (the producer should stop)."""
        with self._cond:
            while len(self._items) >= self.maxsize and not self._closed:
                if self.drop_oldest:
                    self._items.popleft()
                    self.dropped += 1
                else:
                    self._cond.wait()
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> object | None:
        """Next item; None once input finished and the queue is empty. TimeoutError on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._finished or self._closed, timeout):
                raise TimeoutError(f"no frame within {timeout} s")
            if self._items and not self._closed:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            return None

    def finish(self) -> None:
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)


_ROTATE = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}


def _frames_from_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                          fps: float | None) -> int | None:
    """A file's frame count estimated from its duration (containers without a frame index, e.g. MKV)."""
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    else:
        return None
    return round(seconds * fps) or None if fps else None


def _natural_key(p: Path) -> list:
    # frame2.png before frame10.png
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def is_frame_sequence(names: list[str]) -> bool:
    """True when file names look like the frames of one video: at least two, all the same text around
    one number, the numbers evenly spaced (frame_000001.png, frame_000002.png, ... or every n-th).

    A gap, a second naming pattern or a name without a number means a collection of photos.

    >>> is_frame_sequence(["frame_0001.png", "frame_0002.png", "frame_0003.png"])
    True
    >>> is_frame_sequence(["1.jpg", "2.jpg", "5.jpg", "party.jpg"])
    False
    """
    parts = [re.fullmatch(r"(.*?)(\d+)(\D*)", n) for n in names]
    if len(names) < 2 or not all(parts) or len({(m[1], m[3].lower()) for m in parts}) != 1:
        return False
    numbers = sorted(int(m[2]) for m in parts)
    steps = {b - a for a, b in zip(numbers, numbers[1:])}
    return len(steps) == 1 and steps != {0}


def _ffmpeg_message(e: Exception) -> str:
    # PyAV errors read "[Errno 1094995529] Invalid data found when processing input: 'path'";
    # keep the words, we name the source ourselves (masked: a message may quote the URL).
    msg = getattr(e, "strerror", None) or str(e)
    return mask_secrets(str(msg)).strip().rstrip(".")


class VideoSource:
    """An iterator of `Frame` fed by a reader thread. Use `open_source` to make one."""

    def __init__(self, spec: str, config: SourceConfig | None = None) -> None:
        # A URL pasted with spaces around it is still that URL (a file name keeps its spaces).
        self.spec = spec.strip() if "://" in spec else spec
        self.config = config or SourceConfig()
        self.name = mask_secrets(self.spec)  # the only form of the spec that is shown or written
        self.stats = SourceStats()
        self.kind = self._kind(self.spec)
        self.is_live = self.kind in ("rtsp", "webcam")
        attempts = self.config.reconnect_attempts
        self._attempts: int | None = attempts if attempts is not None else (None if self.is_live else 0)
        self.fps: float | None = None
        # Frames the source should give: the container's count, else its duration x fps (then
        # approximate), the number of images of a folder; None for live sources.
        self.frame_count: int | None = None
        self._count_exact = True
        self.truncated = False  # a file that ended before its expected frame count (or on a read error)
        self._rotation_seen = 0
        # Folders: "photos" or "sequence" (source.folder_mode, "auto" resolved); None for videos and cameras.
        self.folder_mode: str | None = None
        self.width: int | None = None
        self.height: int | None = None
        self._images: list[Path] = []
        self._container: av.container.InputContainer | None = None
        self._error: SourceError | None = None
        self._stop = threading.Event()
        self._started = time.monotonic()  # the first-frame deadline counts from here
        self._queue = FrameQueue(self.config.queue_size, drop_oldest=self.is_live)
        self.connected = False  # the stream is open and being read (False while a live source reconnects)
        self._noise = TemporalNoise()  # the camera's noise, measured on the stream (common.noise)

        # Open files, folders and webcams now so a bad input fails at once with a clear message;
        # RTSP connects in the thread (with unlimited attempts, connecting may take forever).
        if self.kind == "folder":
            self._scan_folder()
        elif self.kind != "rtsp":
            self._container = self._open()
        self._thread = threading.Thread(target=self._run, name=f"source:{self.name}", daemon=True)
        self._thread.start()

    # -- public API ------------------------------------------------------------------------

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame; None at the end of the source (or after close()).

        Raises SourceError if the reader failed, TimeoutError if no frame came within `timeout`.
        """
        item = self._queue.get(timeout)
        if item is None:
            if self._error is not None and not self._stop.is_set():
                raise self._error
            return None
        self.stats.delivered += 1
        if isinstance(item.image, av.VideoFrame):  # a live frame, converted only now that it is read
            item.image, item.qp = self._upright(item.image)
        return item  # type: ignore[return-value]

    @property
    def noise(self) -> float | None:
        """The camera's noise sigma measured on the stream so far (common.noise; None: not known yet, or a
        folder of unrelated photos)."""
        return self._noise.value

    @property
    def queued(self) -> int:
        """Frames decoded and not yet read."""
        return len(self._queue)

    @property
    def reading(self) -> bool:
        """The reader is still at work (False once the input ended or failed: what is queued is all)."""
        return self._thread.is_alive()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def close(self, timeout: float = 2.0) -> None:
        """Stop the reader thread. Returns within about `timeout` s even if the thread is stuck
        in a network read (it is a daemon and exits when that read times out)."""
        self._stop.set()
        self._queue.close()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.debug("%s: reader still blocked in a read; left to time out", self.name)

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoSource({self.name!r}, kind={self.kind}, live={self.is_live}, stats={self.stats})"

    # -- opening -----------------------------------------------------------------------------

    @staticmethod
    def _kind(spec: str) -> str:
        low = spec.lower()
        if low.startswith(("rtsp://", "rtsps://")):
            return "rtsp"
        if low.startswith("webcam:"):
            return "webcam"
        return "folder" if Path(spec).is_dir() else "file"

    def _scan_folder(self) -> None:
        folder = Path(self.spec)
        try:
            self._images = sorted((p for p in folder.iterdir()
                                   if p.is_file() and is_image_file(p)), key=_natural_key)
        except OSError as e:
            raise SourceError(f"{self.name}: cannot list folder ({e.strerror or e})") from None
        if not self._images:
            raise SourceError(f"{self.name}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        self.frame_count = len(self._images)
        self.fps = self.config.fps_hint
        mode = self.config.folder_mode
        if mode == "auto":
            mode = "sequence" if is_frame_sequence([p.name for p in self._images]) else "photos"
        self.folder_mode = mode
        log.info("%s: %d images, read as %s", self.name, len(self._images),
                 "the frames of one video" if mode == "sequence" else "unrelated photos (no tracking across them)")

    def _open(self) -> av.container.InputContainer:
        """Open the container for this source; SourceError with one line on failure."""
        cfg = self.config
        options = dict(cfg.options)
        kwargs: dict = {}
        if self.kind == "rtsp":
            target = self.spec
            # FFmpeg >= 5: `timeout` (microseconds) is the socket I/O timeout (`stimeout` is gone).
            options = {"rtsp_transport": cfg.rtsp_transport, "timeout": str(int(cfg.read_timeout * 1e6)),
                       "allowed_media_types": "video", **options}
        elif self.kind == "webcam":
            num = self.spec.split(":", 1)[1]
            if not num.isdigit():
                raise SourceError(f"{self.name}: expected webcam:N with N a number (e.g. webcam:0)")
            target = f"/dev/video{num}"
            if not Path(target).exists():
                raise SourceError(f"{self.name}: no such camera ({target} does not exist)")
            kwargs["format"] = "v4l2"
        else:
            path = Path(self.spec)
            if not path.exists():
                raise SourceError(f"{self.name}: no such file or folder")
            if not path.is_file():
                raise SourceError(f"{self.name}: not a regular file")
            target = str(path)
        t0 = time.monotonic()
        try:
            # PyAV's own timeouts interrupt blocking opens/reads, so close() can never hang forever.
            container = av.open(target, options=options, timeout=(cfg.open_timeout, cfg.read_timeout),
                                **kwargs)
        except av.FFmpegError as e:
            what = "cannot connect" if self.is_live else "not a readable video"
            # A timed-out open surfaces as a misleading "Invalid data" or "Immediate exit requested".
            timed_out = isinstance(e, av.error.ExitError) or time.monotonic() - t0 >= cfg.open_timeout
            detail = f"no answer within {cfg.open_timeout:g} s" if timed_out else _ffmpeg_message(e)
            raise SourceError(f"{self.name}: {what} ({detail})") from None
        except OSError as e:
            raise SourceError(f"{self.name}: cannot open ({e.strerror or e})") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.name}: no video stream")
        stream = container.streams.video[0]
        qp.export_qp(stream.codec_context)  # each frame's H.264 quantiser; slice threads (common/qp.py)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.frame_count = None if self.is_live else (stream.frames or _frames_from_duration(container, stream,
                                                                                             self.fps))
        self._count_exact = bool(stream.frames)
        self.width, self.height = stream.codec_context.width or None, stream.codec_context.height or None
        return container

    # -- reader thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self.kind == "folder":
                self._read_folder()
            else:
                self._read_av()
        except SourceError as e:
            self._error = e
        except Exception as e:  # a bug or an unexpected library error: still one line to the user
            log.exception("%s: reader failed", self.name)
            self._error = SourceError(f"{self.name}: read failed ({type(e).__name__}: {mask_secrets(str(e))})")
        finally:
            self._queue.finish()

    def _emit(self, image: np.ndarray | av.VideoFrame, pts_time: float | None, source_file: str | None = None,
              qp_map: qp.QPMap | None = None, noise: float | None = None) -> bool:
        frame = Frame(index=self.stats.decoded, pts_time=pts_time, image=image, source_id=self.name,
                      source_file=source_file, decoded_at=time.time(), qp=qp_map, noise=noise)
        self.stats.decoded += 1
        ok = self._queue.put(frame)
        self.stats.dropped = self._queue.dropped
        return ok and not self._stop.is_set()

    def _read_folder(self) -> None:
        fps = self.config.fps_hint
        for path in self._images:
            if self._stop.is_set():
                return
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # BGR, grey/alpha converted to 3 channels
            if image is None:
                self.stats.errors += 1
                log.warning("%s: skipping unreadable image %s", self.name, path.name)
                continue
            # The frames of one video (a camera's exported stills) show one scene: its noise is measured as
            # on a stream; unrelated photos have none to compare.
            noise = self._noise.update(image) if self.folder_mode == "sequence" else None
            if not self._emit(image, self.stats.decoded / fps if fps else None, path.name, noise=noise):
                return
        if self.stats.decoded == 0:
            raise SourceError(f"{self.name}: none of the {len(self._images)} images could be read")

    def _read_av(self) -> None:
        container, self._container = self._container, None
        failures = 0  # consecutive failed attempts; reset once frames flow again
        connected_before = False
        while not self._stop.is_set():
            if container is None:
                try:
                    container = self._open()
                except SourceError as e:
                    failures += 1
                    self.stats.errors += 1
                    if not self._retry(failures, str(e).removeprefix(f"{self.name}: ")):
                        raise SourceError(f"{e}; gave up after {failures} attempt(s)") from None
                    continue
                self._noise.reset()  # a new stream: maybe another scene or gain
                if connected_before:
                    self.stats.reconnects += 1
                    log.warning("%s: reconnected", self.name)
                else:
                    log.info("%s: opened (%sx%s, %s fps)", self.name, self.width, self.height, self.fps)
            connected_before = self.connected = True
            before = self.stats.decoded
            try:
                problem = self._decode(container)
            finally:
                self.connected = False
                container.close()
                container = None
            if self._stop.is_set():
                return
            if not self.is_live:
                self._check_complete(problem)
                return
            if self.stats.decoded > before:
                failures = 0
            failures += 1
            if not self._retry(failures, f"stream lost ({problem or 'end of stream'})"):
                raise SourceError(f"{self.name}: stream lost and reconnect attempts exhausted "
                                  f"({problem or 'end of stream'})")

    def _check_complete(self, problem: str | None) -> None:
        """After a file was read to its end: no frame at all is an error; fewer frames than the
        container announces (a file cut short, e.g. a copy that did not finish) is a warning and
        `truncated`, since the run then silently covers only part of the video."""
        decoded, expected = self.stats.decoded, self.frame_count
        if decoded == 0:
            raise SourceError(f"{self.name}: no decodable video frames" + (f" ({problem})" if problem else ""))
        # a count estimated from the duration may be off by a frame or two
        slack = 0 if self._count_exact else max(1, round(0.01 * (expected or 0)))
        self.truncated = bool(problem) or (expected is not None and decoded < expected - slack)
        if self.truncated:
            log.warning("%s: decoded %d of %s frames expected%s; the file is truncated or damaged and the run "
                        "covers only the frames decoded", self.name, decoded, expected if expected else "?",
                        f" ({problem})" if problem else "")

    def _upright(self, frame: av.VideoFrame) -> tuple[np.ndarray, qp.QPMap | None]:
        """The frame as players show it, and its QP map turned alike: phones store video sideways with a
        display-matrix rotation (counter-clockwise degrees); the detector needs faces upright. Flips in
        the matrix are ignored."""
        image, blocks = to_bgr(frame), qp.qp_map(frame)
        turns = round(frame.rotation / 90) % 4
        if turns and turns != self._rotation_seen:
            self._rotation_seen = turns
            log.info("%s: rotation tag of %d degrees: frames are turned upright", self.name, frame.rotation)
        if not turns:
            return image, blocks
        turned = blocks.rotated(turns, frame.width, frame.height) if blocks is not None else None
        return cv2.rotate(image, _ROTATE[turns]), turned

    def _decode(self, container: av.container.InputContainer) -> str | None:
        """Decode until the end of the stream, a read error or stop(); returns the problem, if any."""
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError as e:
                    # One corrupt packet (damaged file, lost RTP data): skip it, keep going.
                    self.stats.errors += 1
                    log.debug("%s: skipped a corrupt packet: %s", self.name, _ffmpeg_message(e))
                    continue
                for frame in frames:
                    # Every decoded frame, dropped or not: the noise is measured at intra frames against the
                    # frame decoded just before (common.noise).
                    noise = self._noise.update_frame(frame)
                    # Live: BGR conversion (a quarter of a reader's time) waits for read(), so frames
                    # dropped because the consumer lags are never converted. Files: here, in this thread.
                    if self.is_live:
                        emitted = self._emit(frame, frame.time, noise=noise)
                    else:
                        image, blocks = self._upright(frame)
                        emitted = self._emit(image, frame.time, qp_map=blocks, noise=noise)
                    if not emitted:
                        return None
        except av.error.ExitError:  # PyAV's read timeout fired
            return f"no data for {self.config.read_timeout:g} s"
        except (av.FFmpegError, OSError) as e:  # demuxer/network error: file damaged or stream lost
            return _ffmpeg_message(e)
        return None

    def _retry(self, failures: int, reason: str) -> bool:
        """Sleep the back-off for the `failures`-th consecutive failure; False if out of attempts.
        Raises SourceError when a live source has not delivered a frame by `first_frame_timeout`."""
        limit = self._attempts
        if self._stop.is_set() or (limit is not None and failures > limit):
            return False
        cfg = self.config
        delay = min(cfg.backoff_max, cfg.backoff_initial * 2 ** (failures - 1), self._first_frame_left(reason))
        log.warning("%s: %s; retry %d/%s in %.1f s", self.name, reason, failures,
                    "unlimited" if limit is None else limit, delay)
        if self._stop.wait(delay):
            return False
        self._first_frame_left(reason)
        return True

    def _first_frame_left(self, reason: str) -> float:
        """Seconds left for a live source to deliver its first frame (inf once it has, or without a
        limit); SourceError naming the last problem when none are left."""
        timeout = self.config.first_frame_timeout
        if not self.is_live or timeout is None or self.stats.decoded:
            return float("inf")
        left = timeout - (time.monotonic() - self._started)
        if left <= 0:
            raise SourceError(f"{self.name}: no video frame within {timeout:g} s ({reason}); check the address "
                              "and that the camera is on, or raise source.first_frame_timeout")
        return left


def open_source(spec: str | Path, config: SourceConfig | None = None) -> VideoSource:
    """Open `spec`: a video file, ``rtsp://...``, ``webcam:N`` or a folder of images.

    Raises SourceError for a missing/unreadable file, an empty folder or a missing webcam.
    An unreachable RTSP camera is retried in the background (see SourceConfig.reconnect_attempts)
    and reported by the iteration once the attempts are exhausted.
    """
    return VideoSource(str(spec), config)
