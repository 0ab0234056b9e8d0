"""The gate pipeline against the stock way, side by side in one run, on the same frames.

stock:    mtcnn's `detect_faces` (TensorFlow, its default settings) + the seed architecture
          (255 px grey) with Keras `model.predict` once per face
maskgate: MTCNN on LiteRT at the gate's settings + one batched LiteRT call per frame (shipped model);
          --detector-model DIR [--with-stock] runs a tuned detector folder, alone or beside the
          stock nets (detector.with_stock), as the agent builds it; --thresholds P,R,O sets its
          nets' stage thresholds (detector.thresholds)

Frames (640x480), the same for both: `one_face` and `four_faces` compose real face photos from
folders/chandrikadeb7 of the shared datasets (with and without masks, about 200 px as a person at
a door); `clips` are frames of the shared videos. Each pipeline runs in a process of its own, one
after the other, so its peak memory (RSS) is its own. Printed per frame kind: frames/s, the
ratio, per-frame latency p50/p95, milliseconds per stage.

Then the decision latency at 30 fps: `maskgate agent --source synthetic --realtime
--door-from-recording` talks to the real broker (--url); a subscriber receives the door commands
and the events. Latency = from the first frame in which the person's face was seen (the event's
latency_ms counts from there) to the door command arriving at the subscriber. The stock pipeline
has no door path (and manages a few frames/s, so 30 fps input would only queue up), so this figure
is maskgate's.

The seed network's weights are freshly initialised: its cost per call does not depend on them.

    .venv/bin/python bench/pipeline.py [--seconds 10] [--runs 3] [--json OUT]
        [--detector-model models/detector-masked [--with-stock] [--thresholds 0.3,0.7,0.8]]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
from stats import percentile  # bench/stats.py

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = Path(os.environ.get("MASKGATE_TEST_DATASETS", ROOT.parent / "shared" / "datasets"))
MASKGATE = str(Path(sys.executable).parent / "maskgate")
KINDS = ("one_face", "four_faces", "clips")
FRAME_SHAPE = (480, 640)
DECISION = re.compile(r"track \d+: (\w+) ")

Stages = dict[str, float]  # stage name -> seconds for one frame
DetectorSettings = dict[str, object]  # DetectorConfig fields other than the defaults
Step = Callable[[np.ndarray], tuple[int, Stages]]


# -- the frames ------------------------------------------------------------------------------


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    if image is None:
        raise SystemExit(f"bench: cannot read {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def face_photos(datasets: Path, count: int) -> list[np.ndarray]:
    """`count` real face photos, masked and bare alternately (the same ones every run)."""
    folder = datasets / "folders" / "chandrikadeb7"
    masked = sorted((folder / "with_mask").glob("*.jp*g"))
    bare = sorted((folder / "without_mask").glob("*.jp*g"))
    if not masked or not bare:
        raise SystemExit(f"bench: no face photos under {folder} (set --datasets)")
    paths = [p for pair in zip(masked[: count // 2 + 1], bare[: count // 2 + 1], strict=False) for p in pair]
    return [read_rgb(p) for p in paths[:count]]


def compose(photos: list[np.ndarray], side: int, spots: list[tuple[int, int]]) -> np.ndarray:
    frame = np.full((*FRAME_SHAPE, 3), 110, np.uint8)
    for photo, (x, y) in zip(photos, spots, strict=False):
        frame[y : y + side, x : x + side] = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
    return frame


def clip_frames(datasets: Path, per_clip: int) -> list[np.ndarray]:
    frames = []
    for path in sorted((datasets / "videos").glob("*.mp4")):
        video = cv2.VideoCapture(str(path))
        total = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or per_clip
        for index in np.linspace(0, total - 1, per_clip).astype(int):
            video.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, bgr = video.read()
            if ok:
                frames.append(cv2.cvtColor(cv2.resize(bgr, FRAME_SHAPE[::-1]), cv2.COLOR_BGR2RGB))
        video.release()
    if not frames:
        raise SystemExit(f"bench: no clips under {datasets / 'videos'}")
    return frames


def usable_photos(datasets: Path, count: int) -> list[np.ndarray]:
    """Face photos are tight crops and MTCNN misses some of them: keep those whose face is found
    in a composed frame, so that "one face" means one face."""
    from maskgate.config import DetectorConfig
    from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector

    detector = LiteRtMtcnnDetector(DetectorConfig())
    return [p for p in face_photos(datasets, count) if len(detector.detect(one_face(p))) == 1]


def one_face(photo: np.ndarray) -> np.ndarray:
    return compose([photo], 220, [(210, 130)])


def write_frames(datasets: Path, path: Path, count: int = 8) -> None:
    """Build every frame kind once, in the parent, so both workers see exactly the same pixels."""
    photos = usable_photos(datasets, count * 4)
    spots = [(70, 20), (350, 20), (70, 250), (350, 250)]
    frames = {
        "one_face": [one_face(photo) for photo in photos[:count]],
        "four_faces": [compose(photos[i : i + 4], 210, spots) for i in range(count)],
        "clips": clip_frames(datasets, count),
    }
    np.savez(path, **{kind: np.stack(frames[kind]) for kind in KINDS})


# -- the two pipelines (each built inside its own worker process) ----------------------------


def stock_pipeline(model_dir: Path, _detector_config: DetectorSettings) -> Step:
    from mtcnn import MTCNN

    from maskgate.core import Box
    from maskgate.crop import crop_face
    from maskgate.training.archs import ARCHS

    detector = MTCNN()
    seed = ARCHS["seed"]
    model = seed.build(seed.crop)

    def step(frame: np.ndarray) -> tuple[int, Stages]:
        started = time.perf_counter()
        faces = detector.detect_faces(frame)
        detected = time.perf_counter()
        crop_s = 0.0
        for face in faces:
            x, y, w, h = face["box"]
            before = time.perf_counter()
            crop = crop_face(frame, Box(x, y, x + w, y + h), seed.crop)
            crop_s += time.perf_counter() - before
            model.predict(crop[np.newaxis].astype(np.float32), verbose=0)
        done = time.perf_counter()
        return len(faces), {
            "detect": detected - started,
            "crop": crop_s,
            "classify": done - detected - crop_s,
        }

    return step


def maskgate_pipeline(model_dir: Path, detector_config: DetectorSettings) -> Step:
    from dataclasses import replace

    from maskgate.config import Config, DetectorConfig
    from maskgate.crop import crop_face
    from maskgate.gate.build import make_detector
    from maskgate.gate.classifier import MaskClassifier

    detector = make_detector(replace(Config(), detector=DetectorConfig(**detector_config)))
    classifier = MaskClassifier(model_dir)

    def step(frame: np.ndarray) -> tuple[int, Stages]:
        started = time.perf_counter()
        faces = detector.detect(frame)
        detected = time.perf_counter()
        crops = [crop_face(frame, face.box_to_crop, classifier.crop) for face in faces]
        cropped = time.perf_counter()
        classifier.classify(crops)
        done = time.perf_counter()
        return len(faces), {
            "detect": detected - started,
            "crop": cropped - detected,
            "classify": done - cropped,
        }

    return step


PIPELINES: dict[str, Callable[[Path, DetectorSettings], Step]] = {
    "stock": stock_pipeline,
    "maskgate": maskgate_pipeline,
}


def measure(step: Step, frames: list[np.ndarray], seconds: float) -> dict[str, object]:
    """Cycle through `frames` for `seconds` (at least one pass), after one warm-up pass."""
    for frame in frames:
        step(frame)  # warm-up: graph tracing, interpreter allocation, one interpreter per shape
    latencies, faces, stages = [], [], {"detect": 0.0, "crop": 0.0, "classify": 0.0}
    started = time.perf_counter()
    while len(latencies) < len(frames) or time.perf_counter() - started < seconds:
        frame = frames[len(latencies) % len(frames)]
        before = time.perf_counter()
        found, spent = step(frame)
        latencies.append(time.perf_counter() - before)
        faces.append(found)
        for stage, value in spent.items():
            stages[stage] += value
    elapsed = time.perf_counter() - started
    n = len(latencies)
    return {
        "frames": n,
        "fps": n / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "faces_per_frame": sum(faces) / n,
        "stage_ms": {stage: total / n * 1000 for stage, total in stages.items()},
    }


def worker(name: str, model_dir: Path, detector: DetectorSettings, frames: Path, seconds: float) -> None:
    """Runs in a child process: one pipeline over every frame kind; prints its figures as JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    step = PIPELINES[name](model_dir, detector)
    with np.load(frames) as saved:
        result: dict[str, object] = {kind: measure(step, list(saved[kind]), seconds) for kind in KINDS}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(name: str, args: argparse.Namespace, frames: Path) -> dict:
    command = [
        sys.executable, __file__, "--worker", name, "--model", str(args.model),
        "--frames", str(frames), "--seconds", str(args.seconds),
        "--detector-model", args.detector_model, *(["--with-stock"] if args.with_stock else []),
        "--thresholds", ",".join(map(str, args.thresholds)),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"bench: the {name} pipeline failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


# -- decision latency through the real broker ------------------------------------------------


class DoorWatcher:
    """A subscriber to one gate's door commands and events, noting when each command arrives."""

    def __init__(self, url: str, prefix: str, gate_id: str):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from maskgate.config import MqttConfig
        from maskgate.gate.comms.client import BrokerSettings

        settings = BrokerSettings.from_config(MqttConfig(url=url))
        self.commands: dict[str, float] = {}  # decision id -> wall time the command arrived
        self.events: dict[str, dict] = {}
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-{gate_id}", protocol=paho.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        topics = [(f"{prefix}/{gate_id}/door/command", 1), (f"{prefix}/{gate_id}/events", 1)]
        self.client.on_connect = lambda client, *_: client.subscribe(topics)
        self.client.connect(settings.host, settings.port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise SystemExit(f"bench: no broker answered at {url}")

    def _on_message(self, _client, _userdata, message) -> None:
        arrived = time.time()
        payload = json.loads(message.payload)
        with self._lock:
            if message.topic.endswith("/door/command"):
                self.commands.setdefault(payload["decision_id"], arrived)
            else:
                self.events[payload["event_id"]] = payload

    def latencies_ms(self) -> list[tuple[str, float]]:
        """(action, first sighting -> command received) for every decision seen both ways."""
        rows = []
        with self._lock:
            for decision_id, arrived in self.commands.items():
                event = self.events.get(decision_id)
                if event is None:
                    continue
                decided = datetime.fromisoformat(event["occurred_at"]).timestamp()
                rows.append((event["action"], event["latency_ms"] + (arrived - decided) * 1000))
        return rows

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def door_latencies(url: str, runs: int) -> tuple[list[tuple[str, float]], int]:
    """Real-time synthetic walk-ups through the agent and the broker; (latencies, decisions printed)."""
    rows, printed = [], 0
    with tempfile.TemporaryDirectory() as folder:
        env = {
            **os.environ,
            "MASKGATE_DATABASE_URL": f"sqlite:///{Path(folder) / 'bench.sqlite'}",
            "MASKGATE_PATHS__SNAPSHOTS": str(Path(folder) / "snapshots"),
            "MASKGATE_MQTT__URL": url,
            "MASKGATE_MQTT__TOPIC_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
        }
        subprocess.run([MASKGATE, "db", "upgrade"], env=env, check=True, capture_output=True)
        for run in range(runs):
            gate_id = f"pipeline-{run}"
            watcher = DoorWatcher(url, env["MASKGATE_MQTT__TOPIC_PREFIX"], gate_id)
            try:
                done = subprocess.run(
                    [MASKGATE, "agent", "--source", "synthetic", "--realtime", "--door-from-recording"],
                    env={**env, "MASKGATE_GATE_ID": gate_id},
                    capture_output=True,
                    text=True,
                )
                if done.returncode:
                    raise SystemExit(f"bench: the agent failed:\n{done.stderr[-3000:]}")
                printed += len(DECISION.findall(done.stdout))
                time.sleep(0.5)  # the last event message may still be on its way
                rows += watcher.latencies_ms()
            finally:
                watcher.close()
    return rows, printed


# -- the report ------------------------------------------------------------------------------


def report(results: dict[str, dict], door: list[tuple[str, float]], printed: int) -> dict:
    out: dict[str, object] = {name: results[name] for name in PIPELINES}
    out["ratio"] = {kind: results["maskgate"][kind]["fps"] / results["stock"][kind]["fps"] for kind in KINDS}
    values = [ms for _, ms in door]
    out["decision_latency_ms"] = {
        "decisions": len(door),
        "decisions_printed": printed,
        "actions": [action for action, _ in door],
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
    }
    return out


def print_report(figures: dict) -> None:
    print(f"\n{'frames':12}{'pipeline':10}{'faces':>7}{'frames/s':>10}{'p50 ms':>8}{'p95 ms':>8}"
          f"{'detect':>8}{'crop':>7}{'classify':>9}")  # fmt: skip
    for kind in KINDS:
        for name in PIPELINES:
            m = figures[name][kind]
            s = m["stage_ms"]
            print(
                f"{kind:12}{name:10}{m['faces_per_frame']:>7.2f}{m['fps']:>10.1f}{m['p50_ms']:>8.1f}"
                f"{m['p95_ms']:>8.1f}{s['detect']:>8.1f}{s['crop']:>7.1f}{s['classify']:>9.1f}"
            )
        print(f"{'':12}{'ratio':10}{'':>7}{figures['ratio'][kind]:>9.1f}x   (goal >= 8x)")
    for name in PIPELINES:
        print(f"peak RSS {name:9} {figures[name]['peak_rss_mb']:8.0f} MB")
    d = figures["decision_latency_ms"]
    print(
        f"decision latency at 30 fps (first sighting -> door command at a subscriber), "
        f"{d['decisions']} decisions ({' '.join(d['actions'])}): p50 {d['p50']:.0f} ms, "
        f"p95 {d['p95']:.0f} ms  (goal p95 <= 250)"
    )


def main() -> None:
    from maskgate.config import DetectorConfig
    from maskgate.training.detector_compare import parse_thresholds

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("models/default"), help="maskgate's model folder")
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--seconds", type=float, default=10.0, help="timing per pipeline and frame kind")
    parser.add_argument("--url", default="mqtt://127.0.0.1:1883", help="the broker for the decision latency")
    parser.add_argument("--runs", type=int, default=3, help="real-time walk-ups (three people each)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--detector-model", default="", help="maskgate's detector folder (detector.model); '' = stock nets"
    )
    parser.add_argument("--with-stock", action="store_true", help="the folder's nets beside the stock nets")
    parser.add_argument(
        "--thresholds",
        type=parse_thresholds,
        default=DetectorConfig().thresholds,
        help="P,R,O: stage thresholds of the detector's nets (detector.thresholds; beside the stock "
        "nets, the folder's)",
    )
    parser.add_argument("--worker", choices=tuple(PIPELINES), help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        detector = {
            "model": args.detector_model,
            "with_stock": args.with_stock,
            "thresholds": args.thresholds,
        }
        worker(args.worker, args.model, detector, args.frames, args.seconds)
        return
    with tempfile.TemporaryDirectory() as folder:
        frames = Path(folder) / "frames.npz"
        write_frames(args.datasets, frames)
        results = {name: run_worker(name, args, frames) for name in PIPELINES}
    door, printed = door_latencies(args.url, args.runs)
    figures = report(results, door, printed)
    print_report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
