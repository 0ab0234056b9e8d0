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


class SourceError(RuntimeError):
    """A source that cannot be opened or read."""


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
        self._capture = capture

    @property
    def fps(self) -> float:
        rate = float(self._capture.get(cv2.CAP_PROP_FPS)) if self._capture else 0.0
        return rate if rate > 0 else 30.0

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
    """Every image of a folder in name order; unreadable files are logged and skipped."""

    live = False

    def __init__(self, folder: Path, fps: float = 10.0):
        self.fps = fps
        self.folder = folder
        self.name = str(folder)
        self._files: list[Path] = []
        self.skipped = 0

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder} is not a folder")
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self._files.reverse()  # pop() from the end gives name order

    def read(self) -> np.ndarray | None:
        while self._files:
            path = self._files.pop()
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is not None and bgr.size:
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            self.skipped += 1
            log.warning("skipping unreadable image %s", path)
        return None

    def close(self) -> None:
        self._files = []


class RealtimeReader:
    """Plays a recording at its own frame rate as if it were a camera (frames drop when behind)."""

    live = True

    def __init__(self, recording: FrameReader, clock: Callable[[], float] = time.monotonic):
        self.recording = recording
        self.name = f"{recording.name} (real time)"
        self.fps = recording.fps
        self._clock = clock
        self._next = 0.0

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
    """The reader for a source spec: a camera index, a URL, a video file, an image folder or 'synthetic'.

    The synthetic walk-up draws its masks from `detector`'s landmarks.
    """
    spec = spec.strip()
    if spec == "synthetic":
        from maskgate.gate.synthetic import SyntheticWalkUp

        size = (camera.width, camera.height) if camera else (640, 480)
        return SyntheticWalkUp(size=size, detector=detector)
    if spec.isdigit():
        return OpenCvReader(int(spec), live=True)
    if "://" in spec:
        return OpenCvReader(spec, live=True, timeout_s=(camera or CameraConfig()).stream_timeout_s)
    path = Path(spec)
    if path.is_dir():
        return FolderReader(path)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return OpenCvReader(str(path), live=False)
    if path.exists():
        raise SourceError(f"{spec}: not a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or an image folder")
    raise SourceError(f"{spec}: no such file or folder (or use a camera index, a URL or 'synthetic')")


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

    def stop(self) -> None:
        self._stop.set()
        with self._condition:
            self._condition.notify_all()
        self._thread.join(timeout=5)

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
                if not self.reader.live:
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
