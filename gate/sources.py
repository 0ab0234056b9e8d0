"""Frame sources: camera, stream, video file, image folder, synthetic walk-up, and the capture thread.

A :class:`FrameReader` produces RGB frames one by one. :class:`Capture` runs a reader on its own
thread. For a live source (camera, stream) it keeps only the newest frame, so the agent is
real-time and never works through a growing queue; for a recorded source (file, folder,
synthetic) it hands over every frame in order, so a clip gives the same decisions on any
machine. A live source that fails is reopened with exponential backoff and reported, never fatal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit
from urllib.request import url2pathname

import cv2
import numpy as np

from maskgate.config import CameraConfig
from maskgate.core import Frame
from maskgate.gate.detector import FaceDetector, InvalidFrameError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}
# What libjpeg (OpenCV's imread and imdecode) paints where it could not decode a damaged JPEG:
# zero coefficients, flat mid-grey, from the damage down to the last row of the image.
DECODE_FILL = 128
FILL_ROWS = 16  # one row of JPEG blocks at the bottom (blocks are 8 or 16 pixels high)
DEFAULT_FPS = 30.0  # what a file or camera that does not say its frame rate is taken to run at
MAX_FPS = 240.0  # a rate reported above this is not a frame rate (an RTSP stream's 90 kHz time base)
# URL schemes of live streams that OpenCV's FFmpeg opens (srt is not built into opencv-python).
# Only these count as a camera: anything else with "://" would otherwise be treated as live, so a
# file:// clip drove a real door and was replayed for ever. A file:// URL is read as the path it names.
STREAM_SCHEMES = {"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "rtp"}


def frame_rate(reported: float) -> float:
    """The frame rate OpenCV reports, or DEFAULT_FPS where it is none: 0 when unknown, and some
    RTSP streams report their 90 kHz time base, which no video writer takes."""
    return reported if 0 < reported <= MAX_FPS else DEFAULT_FPS


class SourceError(RuntimeError):
    """A source that cannot be opened or read."""


class SourceSpecError(SourceError):
    """A source spec that names nothing to read (an unknown URL scheme, no such file, a file that is
    no video): a usage error."""


class FrameReader(Protocol):
    """Reads frames; `read` returns None at the end of a recorded source, raises SourceError on failure."""

    live: bool  # a camera or stream (drop stale frames) rather than a recording (keep every frame)
    name: str
    fps: float  # a recording's frame rate: its frames are timed by it, not by the wall clock

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class OpenCvReader:
    """A camera index, an RTSP/HTTP stream URL or a video file, through OpenCV."""

    def __init__(self, target: int | str, live: bool, timeout_s: float = CameraConfig.stream_timeout_s):
        self.target = target
        self.live = live
        self.timeout_s = timeout_s  # streams only (camera.stream_timeout_s)
        self.name = f"camera {target}" if isinstance(target, int) else str(target)
        self.fps = DEFAULT_FPS  # the source's own rate once open (OpenCV knows it only then)
        self._capture: cv2.VideoCapture | None = None

    def open(self) -> None:
        self.close()
        if isinstance(self.target, str) and self.live:
            timeout_ms = round(self.timeout_s * 1000)
            timeouts = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                timeout_ms,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                timeout_ms,
            ]
            capture = cv2.VideoCapture(self.target, cv2.CAP_ANY, timeouts)
        else:
            capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {self.name}")
        # Kept after close: the last frame of a clip may still be annotated after its reader closed.
        self.fps = frame_rate(float(capture.get(cv2.CAP_PROP_FPS)))
        self._capture = capture

    def read(self) -> np.ndarray | None:
        if self._capture is None:
            raise SourceError(f"{self.name} is not open")
        ok, bgr = self._capture.read()
        if not ok or bgr is None:
            if self.live:
                raise SourceError(f"{self.name} stopped delivering frames")
            return None  # end of the file
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class FolderReader:
    """Every image of a folder in name order; unreadable files are logged and skipped.

    A folder without images fails to open, and one whose images are all unreadable fails at its
    end: either would otherwise end the run like a short clip, without a word.
    """

    live = False

    def __init__(self, folder: Path, fps: float = 10.0):
        self.fps = fps
        self.folder = folder
        self.name = str(folder)
        self._files: list[Path] = []
        self.delivered = 0
        self.skipped = 0
        self.first_skipped: Path | None = None

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder} is not a folder")
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(f"{self.folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self._files.reverse()  # pop() from the end gives name order
        self.delivered, self.skipped, self.first_skipped = 0, 0, None

    def read(self) -> np.ndarray | None:
        while self._files:
            path = self._files.pop()
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is not None and bgr.size:
                self.delivered += 1
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            self._skip(path)
        return self._end()

    def _skip(self, path: Path) -> None:
        self.skipped += 1
        self.first_skipped = self.first_skipped or path
        log.warning("skipping unreadable image %s", path)

    def _end(self) -> None:
        """At the end: the skipped files in one line (the per-file lines scroll away in a long run)."""
        if not self.skipped:
            return None
        example = self.first_skipped.name if self.first_skipped else ""
        summary = f"unreadable images skipped in {self.folder}: {self.skipped}, e.g. {example}"
        if not self.delivered:
            raise SourceError(f"no readable image: {summary}")
        log.warning("%s", summary)
        return None

    def close(self) -> None:
        self._files = []


class RealtimeReader:
    """Plays a recording at its own frame rate as if it were a camera (frames drop when behind).

    Live only in that: a recording that fails is not reopened (see :func:`reopens`).
    """

    live = True

    def __init__(self, recording: FrameReader, clock: Callable[[], float] = time.monotonic):
        self.recording = recording
        self.name = f"{recording.name} (real time)"
        self._clock = clock
        self._next = 0.0

    @property
    def fps(self) -> float:
        # The recording's, read when asked: a video file knows its rate only once open.
        return self.recording.fps

    def open(self) -> None:
        self.recording.open()
        self._next = self._clock()

    def read(self) -> np.ndarray | None:
        image = self.recording.read()
        delay = self._next - self._clock()
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + 1 / self.fps, self._clock() - 1 / self.fps)
        return image

    def close(self) -> None:
        self.recording.close()


def check_complete(image: np.ndarray) -> None:
    """Raise :class:`InvalidFrameError` for an image decoded from a damaged JPEG (a file half
    written, a frame scrambled on its way).

    Its lower part is flat mid-grey, and where that band crosses a face it looks like a grey mask
    over mouth and chin: the shipped model then says ``improper_mask`` of an unmasked man
    (tests/faults/test_camera.py). No camera sees a band of exactly one value, so this costs a
    real frame nothing. Call it after :func:`maskgate.gate.detector.check_frame`.
    """
    if image.shape[0] >= FILL_ROWS and bool((image[-FILL_ROWS:] == DECODE_FILL).all()):
        raise InvalidFrameError(
            f"the bottom of the frame is flat grey ({DECODE_FILL}): an image decoded from damaged data"
        )


def open_reader(
    spec: str, camera: CameraConfig | None = None, detector: FaceDetector | None = None
) -> FrameReader:
    """The reader for a source spec: a camera index, a stream URL, a video file (also as a file://
    URL), an image folder or 'synthetic'. An unknown URL scheme raises :class:`SourceSpecError`.

    The synthetic walk-up draws its masks from `detector`'s landmarks.
    """
    spec = spec.strip()
    camera = camera or CameraConfig()
    if spec == "synthetic":
        from maskgate.gate.synthetic import SyntheticWalkUp

        return SyntheticWalkUp(size=(camera.width, camera.height), detector=detector)
    if spec.isdigit():
        # A camera delivers its own size: asking it for camera.width x height (the synthetic walk-up's)
        # would change its field of view and the faces' pixel sizes the policy counts.
        return OpenCvReader(int(spec), live=True)
    if "://" in spec:
        try:
            scheme = urlsplit(spec).scheme.lower()
        except ValueError as exc:  # e.g. an unclosed IPv6 bracket
            raise SourceSpecError(f"{spec}: not a URL ({exc})") from None
        if scheme in STREAM_SCHEMES:
            return OpenCvReader(spec, live=True, timeout_s=camera.stream_timeout_s)
        spec = str(_file_url_path(spec))
    return _recording(spec)


def _file_url_path(url: str) -> Path:
    """The local path a file:// URL names; any other scheme is a usage error."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file":
        streams = ", ".join(f"{scheme}://" for scheme in sorted(STREAM_SCHEMES))
        raise SourceSpecError(f"{url}: unknown URL scheme {parts.scheme!r} (streams: {streams}; or file://)")
    if parts.netloc not in ("", "localhost"):
        raise SourceSpecError(f"{url}: a file:// URL must name a file on this machine, not on {parts.netloc}")
    return Path(url2pathname(parts.path))


def _recording(spec: str) -> FrameReader:
    """A video file or an image folder, named by its path."""
    path = Path(spec)
    if path.is_dir():
        return FolderReader(path)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return OpenCvReader(str(path), live=False)
    # A source spec that names nothing to read is a usage error (exit 2), as an unknown URL scheme is.
    if path.exists():
        raise SourceSpecError(f"{spec}: not a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or an image folder")
    raise SourceSpecError(f"{spec}: no such file or folder (or use a camera index, a URL or 'synthetic')")


def reopens(reader: FrameReader) -> bool:
    """Whether a reader that failed is opened again: a camera or a stream may come back, a recording
    (also one played in real time) will not, and retrying it would hang the run for ever."""
    return reader.live and not isinstance(reader, RealtimeReader)


@dataclass
class CaptureStatus:
    """What the capture thread reports: whether the source works, and what went wrong last."""

    connected: bool = False  # the reader is open and its last read did not fail
    frames: int = 0
    reconnects: int = 0
    last_error: str = ""
    finished: bool = False
    alive_at: float = 0.0  # capture clock: the last successful open or frame
    stale_after_s: float | None = None  # live sources: not ok after this long without a frame
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """The source works: open, and for a live source a frame (or the open) within `stale_after_s`.

        A reader blocked in a read that has not failed yet is otherwise invisible: the state and
        /healthz would say "camera ok" for as long as the read blocks.
        """
        if not self.connected:
            return False
        return self.stale_after_s is None or self.clock() - self.alive_at <= self.stale_after_s


class Capture:
    """Runs a reader on its own thread; :meth:`next_frame` hands frames to the agent."""

    def __init__(
        self,
        reader: FrameReader,
        camera: CameraConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.reader = reader
        self.camera = camera or CameraConfig()
        # A recording waits for the agent between frames, so only a live source can go stale.
        stale_after_s = self.camera.stale_after_s if reader.live else None
        self.status = CaptureStatus(stale_after_s=stale_after_s, clock=clock)
        self._clock = clock
        self._frame: Frame | None = None
        self._seq = 0
        self._started = clock()
        self._condition = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture {reader.name}", daemon=True)

    def start(self) -> Capture:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """:meth:`request_stop`, then :meth:`join`."""
        self.request_stop()
        return self.join(timeout)

    def request_stop(self) -> None:
        """Ask the capture thread to end, without waiting for it (a read in progress ends first)."""
        self._stop.set()
        with self._condition:
            self._condition.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait at most `timeout` s for the capture thread; whether it ended. One blocked in a read
        (a stream that went silent) is left behind: it is a daemon and cannot hold up the exit."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def next_frame(self, timeout: float = 1.0) -> Frame | None:
        """The newest unseen frame, or None if none came within `timeout` (or the source ended)."""
        deadline = self._clock() + timeout
        with self._condition:
            while self._frame is None and not self.status.finished and not self._stop.is_set():
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return None
                self._condition.wait(remaining)
            frame, self._frame = self._frame, None
            self._condition.notify_all()  # a recorded source waits for the slot to be free
            return frame

    @property
    def finished(self) -> bool:
        """The source ended (recorded) or the capture was stopped, and every frame was taken."""
        with self._condition:
            return (self.status.finished or self._stop.is_set()) and self._frame is None

    def _run(self) -> None:
        try:
            self._read_until_done()
        finally:  # whatever ended the thread, the agent must not wait for frames that never come
            with self._condition:
                self.status.finished = True
                self._condition.notify_all()

    def _read_until_done(self) -> None:
        backoff = self.camera.reconnect_initial_s
        opened = False
        while not self._stop.is_set():
            try:
                if not opened:
                    self.reader.open()
                    opened, self.status.connected, self.status.alive_at = True, True, self._clock()
                    backoff = self.camera.reconnect_initial_s
                image = self.reader.read()
            except Exception as exc:  # not only SourceError: a cv2.error on an odd frame, a MemoryError
                if isinstance(exc, SourceError):
                    opened = self._failed(str(exc))
                else:
                    where = "reading" if opened else "opening"
                    opened = self._failed(f"unexpected {type(exc).__name__} while {where}: {exc}", exc)
                if not reopens(self.reader):
                    break  # a recording that cannot be read will not get better
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.camera.reconnect_max_s)
                self.status.reconnects += 1
                continue
            if image is None:
                break
            self._publish(image)
        self.reader.close()

    def _failed(self, error: str, unexpected: Exception | None = None) -> bool:
        """Report a failed open or read (an `unexpected` one with its traceback) and close the reader."""
        if self.status.connected or error != self.status.last_error:
            log.error("camera source %s: %s", self.reader.name, error, exc_info=unexpected)
        self.status.connected, self.status.last_error = False, error
        self.reader.close()
        return False

    def _publish(self, image: np.ndarray) -> None:
        with self._condition:
            if not self.reader.live:
                # A recording keeps every frame: wait until the agent took the previous one.
                while self._frame is not None and not self._stop.is_set():
                    self._condition.wait(0.5)
            self._seq += 1
            # A recording is timed by its own frame rate, so that a clip behaves the same
            # (tracks, latencies) however fast this machine processes it.
            media_time = self._started + (self._seq - 1) / self.reader.fps
            timestamp = self._clock() if self.reader.live else media_time
            self._frame = Frame(image=image, seq=self._seq, timestamp=timestamp)
            self.status.frames += 1
            self.status.alive_at = self._clock()
            self._condition.notify_all()
