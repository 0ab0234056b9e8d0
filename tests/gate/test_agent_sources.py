"""`maskgate agent` as a process on odd sources and outputs: a file:// clip, a broken clip in real
time, folders without a usable frame, annotation paths that cannot be written, bad numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskgate.cli import main

ROOT = Path(__file__).parents[2]
MODEL = ROOT / "models" / "default"
VIDEOS = Path(os.environ.get("MASKGATE_TEST_DATASETS", ROOT.parent / "shared" / "datasets")) / "videos"
CLIP_25_FPS = VIDEOS / "916241958_mask.mp4"
MASKGATE = str(Path(sys.executable).parent / "maskgate")

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A gate of its own: an upgraded SQLite database, snapshots under tmp_path, the shipped model."""
    gate = {
        **os.environ,
        "MASKGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "MASKGATE_PATHS__SNAPSHOTS": str(tmp_path / "snaps"),
        "MASKGATE_PATHS__ACTIVE_MODEL": str(MODEL),
    }
    subprocess.run([MASKGATE, "db", "upgrade"], env=gate, check=True, capture_output=True)
    return gate


def agent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    # The timeout turns a hang (a source retried or replayed for ever) into a failure, not a stuck run.
    return subprocess.run([MASKGATE, "agent", *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.integration
def test_a_file_url_never_drives_a_door_unless_asked(env, prefix):
    """file:// counted as a live camera: the clip drove the door over MQTT, replayed for ever."""
    from tests.gate.comms.brokers import Spy

    door = Spy(topics=[f"{prefix}/gate-1/door/command"])
    try:
        refused = agent({**env, "MASKGATE_MQTT__TOPIC_PREFIX": prefix}, "--source", CLIP_25_FPS.as_uri())
    finally:
        door.close()
    assert refused.returncode == 2, refused.stderr
    assert f"{CLIP_25_FPS} is a recording, not a camera, and would drive the door of gate gate-1" in (
        refused.stderr
    )
    assert door.messages == []


def test_a_broken_recording_in_real_time_ends_with_its_error(env, tmp_path):
    """--realtime retried "moov atom not found" for ever."""
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).bytes(5000))  # FFmpeg: "moov atom not found"
    result = agent(env, "--source", str(broken), "--realtime", "--no-mqtt")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"maskgate agent: cannot open {broken}\n" in result.stderr


@pytest.mark.parametrize("realtime", [[], ["--realtime"]], ids=["recording", "realtime"])
def test_the_annotated_copy_has_the_clip_s_frame_rate(env, tmp_path, realtime):
    """The rate was read before the clip was open, when OpenCV does not know it: a 25 fps clip gave 30."""
    out = tmp_path / "out.mp4"
    args = ["--source", str(CLIP_25_FPS), "--no-mqtt", "--max-frames", "10", "--annotate", str(out)]
    result = agent(env, *args, *realtime)
    assert result.returncode == 0, result.stderr
    video = cv2.VideoCapture(str(out))
    assert video.get(cv2.CAP_PROP_FPS) == 25 and video.get(cv2.CAP_PROP_FRAME_COUNT) > 0
    video.release()


def unreadable(folder: Path) -> None:
    (folder / "a.jpg").write_bytes(b"not a jpeg")
    (folder / "b.png").write_bytes(b"")


def too_small(folder: Path) -> None:
    for n in range(3):  # read fine, but no frame the agent can judge (at least 12x12)
        cv2.imwrite(str(folder / f"{n}.png"), np.full((8, 8, 3), 100, np.uint8))


@pytest.mark.parametrize(
    ("fill", "message"),
    [
        (lambda folder: None, "{folder} has no images (.bmp, .jpeg, .jpg, .png, .webp)"),
        (unreadable, "no readable image: unreadable images skipped in {folder}: 2, e.g. a.jpg"),
        (too_small, "{folder} gave no usable frame"),
    ],
    ids=["empty", "unreadable", "too-small"],
)
def test_a_recording_without_a_usable_frame_fails(env, tmp_path, fill, message):
    """These ended with exit 0 and "0 frames ... 0 bad frames", as if all went well."""
    folder = tmp_path / "frames"
    folder.mkdir()
    fill(folder)
    result = agent(env, "--source", str(folder), "--no-mqtt")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"maskgate agent: {message.format(folder=folder)}\n" in result.stderr


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (lambda tmp: tmp / "missing" / "out.mp4", "no folder {tmp}/missing (it is not created for you)"),
        (lambda tmp: tmp / "file.txt" / "out.mp4", "{tmp}/file.txt is not a folder"),
        (lambda tmp: Path("/proc/out.mp4"), "cannot write there (No such file or directory)"),
        (lambda tmp: tmp / "out", "the video's name must end in .mp4, .m4v, .mov, .mkv, .avi"),
        (lambda tmp: tmp / "folder.mp4", "is a folder; give a file name in it"),
    ],
    ids=["no-folder", "file-as-folder", "proc", "no-suffix", "a-folder"],
)
def test_an_annotation_path_that_cannot_be_written_is_a_usage_error(tmp_path, capsys, where, message):
    """They failed at the first frame with a traceback, or created the missing folder silently."""
    (tmp_path / "file.txt").write_text("a file")
    (tmp_path / "folder.mp4").mkdir()
    out = where(tmp_path)
    code = main(["agent", "--source", "synthetic", "--no-mqtt", "--max-frames", "1", "--annotate", str(out)])
    assert code == 2
    assert capsys.readouterr().err == f"maskgate: --annotate {out}: {message.format(tmp=tmp_path)}\n"
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("value", ["0", "-3", "1.5", "nan"])
def test_max_frames_must_be_a_whole_number_above_0(capsys, value):
    with pytest.raises(SystemExit) as exited:
        main(["agent", "--max-frames", value])
    assert exited.value.code == 2
    assert f"argument --max-frames: expected a whole number above 0, got '{value}'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("ftp://camera/stream", "ftp://camera/stream: unknown URL scheme 'ftp'"),
        ("nowhere.mp4", "nowhere.mp4: no such file or folder"),
        ("pyproject.toml", "pyproject.toml: not a video"),
    ],
)
def test_a_source_that_names_nothing_to_read_is_a_usage_error(env, source, says):
    result = agent(env, "--source", source, "--no-mqtt")
    assert result.returncode == 2 and f"maskgate: {says}" in result.stderr
