"""Frame sources and the capture thread: recordings keep every frame, live sources keep the newest
and survive failures."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from maskgate.config import CameraConfig
from maskgate.gate.sources import (
    DEFAULT_FPS,
    Capture,
    FolderReader,
    RealtimeReader,
    SourceError,
    SourceSpecError,
    frame_rate,
    open_reader,
)

FAST_RETRY = CameraConfig(reconnect_initial_s=0.01, reconnect_max_s=0.05)


def image(value: int, size: int = 32) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


def drain(capture: Capture, limit: int = 1000) -> list:
    frames = []
    while not capture.finished and len(frames) < limit:
        frame = capture.next_frame(timeout=1.0)
        if frame is not None:
            frames.append(frame)
    return frames


def test_folder_keeps_every_frame_in_order_and_skips_corrupt_files(tmp_path):
    for n in range(5):
        cv2.imwrite(str(tmp_path / f"{n:03d}.png"), image(n * 40))
    (tmp_path / "002b.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "notes.txt").write_text("ignored")
    reader = FolderReader(tmp_path, fps=10)
    capture = Capture(reader).start()
    frames = drain(capture)
    capture.stop()
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 40, 80, 120, 160]
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5]
    assert frames[1].timestamp - frames[0].timestamp == pytest.approx(0.1)  # the recording's own clock
    assert reader.skipped == 1


def test_video_file_frames_are_rgb(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
    for _ in range(12):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 2] = 255  # red in OpenCV's BGR
        writer.write(frame)
    writer.release()
    reader = open_reader(str(path))
    capture = Capture(reader).start()
    frames = drain(capture)
    capture.stop()
    assert len(frames) == 12 and not reader.live
    assert frames[0].image[10, 10, 0] > 200 and frames[0].image[10, 10, 2] < 50  # red is first in RGB


class FlakyCamera:
    """A live source that fails to open twice, delivers frames, then dies once mid-stream."""

    live = True
    name = "flaky camera"
    fps = 30.0

    def __init__(self):
        self.opens = 0
        self.reads = 0

    def open(self) -> None:
        self.opens += 1
        if self.opens <= 2:
            raise SourceError("no signal")

    def read(self) -> np.ndarray:
        self.reads += 1
        if self.reads == 20:
            raise SourceError("stopped delivering frames")
        time.sleep(0.002)
        return image(self.reads % 250)

    def close(self) -> None:
        pass


def test_a_failing_live_source_is_retried_and_reported_not_fatal(caplog):
    camera = FlakyCamera()
    capture = Capture(camera, FAST_RETRY).start()
    frames = []
    deadline = time.monotonic() + 5
    while len(frames) < 30 and time.monotonic() < deadline:
        frame = capture.next_frame(timeout=0.5)
        if frame is not None:
            frames.append(frame)
    capture.stop()
    assert len(frames) == 30
    assert camera.opens == 4  # two failed opens, the first stream, the reopened one
    assert capture.status.reconnects == 3
    assert "no signal" in caplog.text and "stopped delivering frames" in caplog.text
    assert [f.seq for f in frames] == sorted(f.seq for f in frames)


def test_a_live_source_keeps_only_the_newest_frame():
    camera = FlakyCamera()
    camera.opens = 2  # opens at once
    capture = Capture(camera, FAST_RETRY).start()
    time.sleep(0.3)  # the agent is busy: frames pile up at the camera, not in a queue
    first = capture.next_frame(timeout=1)
    second = capture.next_frame(timeout=1)
    capture.stop()
    assert first.seq > 10  # older frames were dropped
    assert second.seq > first.seq


class BlockedCamera:
    """A stream gone silent: its read blocks until released."""

    live = True
    name = "silent stream"
    fps = 30.0

    def __init__(self):
        self.reading, self.release = threading.Event(), threading.Event()

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray:
        self.reading.set()
        self.release.wait(60)
        return image(1)

    def close(self) -> None:
        pass


def test_a_capture_blocked_in_a_read_is_asked_to_stop_and_waited_for_only_as_long_as_asked():
    camera = BlockedCamera()
    capture = Capture(camera).start()
    try:
        assert camera.reading.wait(30)
        capture.request_stop()  # returns at once: the agent's shutdown asks every part first
        assert capture.join(0.2) is False and not camera.release.is_set()
    finally:
        camera.release.set()
    assert capture.join(30) is True  # the read returned: it saw the stop and ended


class OddFrameReader:
    """Converts BGR frames to RGB as OpenCvReader does: an odd frame makes cvtColor raise cv2.error."""

    fps = 30.0

    def __init__(self, live: bool, frames: list[np.ndarray]):
        self.live = live
        self.name = "odd camera" if live else "odd clip"
        self.frames = frames
        self.opens = 0
        self.reads = 0

    def open(self) -> None:
        self.opens += 1

    def read(self) -> np.ndarray | None:
        if self.reads == len(self.frames):
            if self.live:
                time.sleep(0.002)
                return image(self.reads % 250)
            return None
        self.reads += 1
        return cv2.cvtColor(self.frames[self.reads - 1], cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        pass


ODD_FRAME = np.zeros((32, 32, 2), np.uint8)  # not BGR: cvtColor raises cv2.error


def frames_until(capture: Capture, count: int, timeout: float = 5.0) -> list:
    frames = []
    deadline = time.monotonic() + timeout
    while not capture.finished and len(frames) < count and time.monotonic() < deadline:
        frame = capture.next_frame(timeout=0.2)
        if frame is not None:
            frames.append(frame)
    return frames


def test_a_recording_whose_reader_raises_anything_ends_and_is_reported(caplog):
    reader = OddFrameReader(live=False, frames=[image(10), image(20), ODD_FRAME, image(30)])
    capture = Capture(reader, FAST_RETRY).start()
    frames = frames_until(capture, 10)
    finished = capture.finished
    capture.stop()
    assert [int(f.image[0, 0, 0]) for f in frames] == [10, 20]
    assert finished and not capture.status.ok  # the run ends; the state never says "camera ok" meanwhile
    assert capture.status.last_error.startswith("unexpected error while reading: OpenCV")
    assert "camera source odd clip: unexpected error while reading" in caplog.text
    assert "cv2.cvtColor(self.frames" in caplog.text  # where: the traceback


def test_a_live_source_whose_reader_raises_anything_is_reopened(caplog):
    camera = OddFrameReader(live=True, frames=[image(10), ODD_FRAME])
    capture = Capture(camera, FAST_RETRY).start()
    frames = frames_until(capture, 5)
    ok = capture.status.ok
    capture.stop()
    assert len(frames) == 5 and ok  # frames came again after the odd one
    assert camera.opens == 2 and capture.status.reconnects == 1
    assert "camera source odd camera: unexpected error while reading: OpenCV" in caplog.text


def test_a_camera_that_does_not_exist_is_reported():
    capture = Capture(open_reader("57"), FAST_RETRY).start()  # no /dev/video57 here
    assert capture.next_frame(timeout=0.3) is None
    capture.stop()
    assert not capture.status.ok and "cannot open camera 57" in capture.status.last_error


@pytest.mark.parametrize(
    ("spec", "message"), [("nowhere.mp4", "no such file or folder"), ("pyproject.toml", "not a video")]
)
def test_bad_specs(spec, message):
    with pytest.raises(SourceError, match=message):
        open_reader(spec)


def write_clip(path, fps: float, frames: int = 12, size: tuple[int, int] = (64, 48)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for n in range(frames):
        writer.write(np.full((size[1], size[0], 3), n * 20, np.uint8))
    writer.release()


def test_a_file_url_is_the_recording_it_names_not_a_camera(tmp_path):
    """A file:// clip counted as a live camera: it could drive a real door and was replayed for ever."""
    path = tmp_path / "a clip.mp4"
    write_clip(path, fps=25)
    reader = open_reader(path.as_uri())  # file:///.../a%20clip.mp4
    assert not reader.live and reader.name == str(path)
    capture = Capture(reader, FAST_RETRY).start()
    frames = drain(capture)
    capture.stop()
    assert len(frames) == 12 and capture.status.reconnects == 0  # played once, to its end
    assert not open_reader(f"file://localhost{path}").live


@pytest.mark.parametrize(
    "url", ["rtsp://cam/stream1", "RTSPS://cam/1", "http://cam/video.mjpg", "udp://0.0.0.0:5000"]
)
def test_stream_urls_are_live(url):
    assert open_reader(url).live


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host/clip.mp4", "unknown URL scheme 'ftp'"),
        ("://clip.mp4", "unknown URL scheme ''"),
        ("file://otherhost/clip.mp4", "not on otherhost"),
    ],
)
def test_other_urls_are_usage_errors(url, message):
    with pytest.raises(SourceSpecError, match=message):
        open_reader(url)


def test_a_recording_in_real_time_that_cannot_be_opened_is_not_retried(tmp_path):
    """--realtime made a recording look live, so "moov atom not found" was retried for ever."""
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    capture = Capture(RealtimeReader(open_reader(str(broken))), FAST_RETRY).start()
    assert frames_until(capture, 1, timeout=3.0) == []
    finished = capture.finished
    capture.stop()
    assert finished and capture.status.reconnects == 0
    assert capture.status.last_error == f"cannot open {broken}"


def test_a_recording_in_real_time_plays_at_its_own_frame_rate(tmp_path):
    """The rate was read before the file was open, when OpenCV does not know it: always 30."""
    path = tmp_path / "clip25.mp4"
    write_clip(path, fps=25)
    reader = RealtimeReader(open_reader(str(path)))
    capture = Capture(reader, FAST_RETRY).start()
    frames = frames_until(capture, 12)
    capture.stop()
    assert frames and reader.fps == 25  # also after the end: the last frame may be annotated late


def test_an_empty_folder_is_an_error_not_an_empty_run(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    capture = Capture(open_reader(str(tmp_path)), FAST_RETRY).start()
    assert drain(capture) == []
    capture.stop()
    assert capture.status.last_error == f"{tmp_path} has no images (.bmp, .jpeg, .jpg, .png, .webp)"


def test_a_folder_of_unreadable_images_is_an_error_naming_them(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "b.png").write_bytes(b"")
    capture = Capture(open_reader(str(tmp_path)), FAST_RETRY).start()
    assert drain(capture) == []
    capture.stop()
    error = capture.status.last_error
    assert error == f"no readable image: unreadable images skipped in {tmp_path}: 2, e.g. a.jpg"


def test_skipped_images_are_summed_up_at_the_end(tmp_path, caplog):
    """One line with the count: the per-file lines scroll away in a long run."""
    for n in range(3):
        cv2.imwrite(str(tmp_path / f"{n:03d}.png"), image(n * 40))
    (tmp_path / "001b.jpg").write_bytes(b"not a jpeg")
    capture = Capture(FolderReader(tmp_path), FAST_RETRY).start()
    assert len(drain(capture)) == 3
    capture.stop()
    assert capture.status.last_error == ""
    assert f"unreadable images skipped in {tmp_path}: 1, e.g. 001b.jpg" in caplog.text


def test_a_frame_rate_no_writer_takes_is_read_as_the_default():
    """Some RTSP streams report their 90 kHz time base as the frame rate; an annotated copy at
    90000 fps cannot be written (the run ended at its first frame). 0 is OpenCV's "unknown"."""
    assert [frame_rate(r) for r in (25.0, 240.0, 90000.0, 0.0, -1.0)] == [25.0, 240.0, 30.0, 30.0, 30.0]
    assert frame_rate(90000.0) == DEFAULT_FPS


def test_a_url_that_does_not_parse_is_a_usage_error():
    with pytest.raises(SourceSpecError, match=r"rtsp://\[cam/x: not a URL"):
        open_reader("rtsp://[cam/x")

