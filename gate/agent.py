"""The agent loop: frames -> faces -> tracks -> one batched classification -> decisions -> sink.

Every stage is an object with a small interface (DESIGN.md, "Data flow"); this module only
wires them. :meth:`Agent.process` handles one frame and is what tests and benchmarks drive;
:meth:`Agent.run` pulls frames from a :class:`Capture` until the source ends or :meth:`stop`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from maskgate.core import Action, Classification, Decision, Event, Frame, Track
from maskgate.crop import BoxCalibration, EmptyCropError, crop_face
from maskgate.gate.annotate import VideoSink, draw
from maskgate.gate.classifier import MaskClassifier
from maskgate.gate.detector import (
    FaceDetector,
    InvalidFrameError,
    calibration_mismatch,
    check_frame,
    crops_calibrated_as,
)
from maskgate.gate.policy import DecisionPolicy
from maskgate.gate.snapshots import SnapshotWriter
from maskgate.gate.sources import Capture, check_complete
from maskgate.gate.timing import StageTimings
from maskgate.gate.tracker import Tracker
from maskgate.store import EventStore

log = logging.getLogger(__name__)

INCIDENT_ACTIONS = frozenset({Action.DENY, Action.WARN})
# The rate the state and the metrics report is the rate over this window (the heartbeat's interval),
# not since the start: after a day at 30 fps and an hour without frames it must say 0, not 28.8.
FPS_WINDOW_S = 5.0
# Decisions kept in AgentStats.decisions (tests and the end of a run look at them); a gate that runs
# for months counts them in AgentStats.decided instead of keeping every one.
RECENT_DECISIONS = 1000


class DecisionSink(Protocol):
    """Where decisions go: the event store, and through the MQTT link the door."""

    def submit(self, decision: Decision, snapshot_path: str | None) -> Event: ...


class StoreSink:
    """Records decisions as events without a broker (`maskgate agent --no-mqtt`)."""

    def __init__(self, store: EventStore):
        self.store = store

    def submit(self, decision: Decision, snapshot_path: str | None) -> Event:
        event = Event.from_decision(decision, snapshot_path)
        self.store.record_event(event)
        return event


class FrameRate:
    """Frames per second over the last `window_s` seconds; thread-safe (the metrics server reads it)."""

    def __init__(self, window_s: float = FPS_WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._started = clock()
        self._times: deque[float] = deque()  # clock() of each frame within the window
        self._lock = threading.Lock()

    def tick(self) -> None:
        now = self._clock()
        with self._lock:
            self._times.append(now)
            self._forget(now)

    def rate(self) -> float:
        now = self._clock()
        with self._lock:
            self._forget(now)
            frames = len(self._times)
        span = min(self.window_s, now - self._started)  # the first seconds are a shorter window
        return frames / span if span > 0 else 0.0

    def _forget(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()


@dataclass
class AgentStats:
    frames: int = 0
    bad_frames: int = 0
    faces: int = 0
    decided: int = 0  # decisions of the whole run
    decisions: list[Decision] = field(default_factory=list)  # the latest RECENT_DECISIONS of them
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    started: float = field(init=False)
    rate: FrameRate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.rate = FrameRate(FPS_WINDOW_S, self.clock)

    def count_frame(self) -> None:
        self.frames += 1
        self.rate.tick()

    def count_decision(self, decision: Decision) -> None:
        self.decided += 1
        self.decisions.append(decision)
        if len(self.decisions) > RECENT_DECISIONS:
            del self.decisions[0]

    @property
    def fps(self) -> float:
        """Frames per second now: over the last FPS_WINDOW_S (the state and the metrics report this)."""
        return self.rate.rate()

    @property
    def average_fps(self) -> float:
        """Frames per second over the whole run (the summary at its end)."""
        elapsed = self.clock() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0


class Agent:
    def __init__(
        self,
        detector: FaceDetector,
        classifier: MaskClassifier,
        tracker: Tracker,
        policy: DecisionPolicy,
        sink: DecisionSink,
        snapshots: SnapshotWriter | None = None,
        video: VideoSink | None = None,
        on_decision: Callable[[Decision, Event], None] | None = None,
        box_calibration: BoxCalibration | None = None,  # None: crop the detector's boxes as they are
    ):
        self.detector = detector
        self.box_calibration = box_calibration or BoxCalibration()
        self.classifier = classifier
        self._warn_on_crop_mismatch(classifier)
        self.tracker = tracker
        self.policy = policy
        self.sink = sink
        self.snapshots = snapshots
        self.video = video
        self.on_decision = on_decision
        self.timings = StageTimings()
        self.stats = AgentStats()
        self._decided: dict[int, Decision] = {}  # latest decision per live track, for annotation
        self._stop = threading.Event()
        self._live = False  # frames of a live source carry wall-clock capture times
        self._swap_lock = threading.Lock()
        self._next_classifier: MaskClassifier | None = None  # from a reload; used from the next frame
        # time.monotonic() of the run loop's latest pass; None outside run(). /healthz reads it: a loop
        # blocked in a frame (a locked SQLite spool, a hung database) sends no door command at all.
        self.loop_at: float | None = None

    def stop(self) -> None:
        self._stop.set()

    def loop_stalled_s(self) -> float:
        """Seconds since :meth:`run`'s loop last came round; 0 outside run() (not started, or ended:
        a recording that ended is not stuck)."""
        at = self.loop_at
        return 0.0 if at is None else max(0.0, time.monotonic() - at)

    def swap_classifier(self, classifier: MaskClassifier) -> None:
        """Run `classifier` from the start of the next frame; safe from any thread.

        The frame in progress finishes with the model it started with (its crops are cut to that
        model's crop spec), so no frame is dropped or classified half by each. The old model's
        votes are dropped (:meth:`DecisionPolicy.new_model`): a person being decided on is decided
        on by the new model alone, a few frames later, and decisions already issued stand.
        """
        with self._swap_lock:
            self._next_classifier = classifier

    def _apply_swap(self) -> None:
        if self._next_classifier is None:  # the common case, without taking the lock
            return
        with self._swap_lock:
            classifier, self._next_classifier = self._next_classifier, None
        if classifier is not None:
            log.info("classifier %s replaces %s", classifier.version, self.classifier.version)
            self._warn_on_crop_mismatch(classifier)
            self.classifier = classifier
            self.policy.new_model()

    def _warn_on_crop_mismatch(self, classifier: MaskClassifier) -> None:
        # A warning, not a refusal: the door still fails closed on low confidence, and an operator
        # may run a detector the model was not trained with on purpose (e.g. to compare).
        cropped_as = crops_calibrated_as(self.detector, self.box_calibration)
        reason = calibration_mismatch(classifier.card, cropped_as)
        if reason:
            log.warning("%s", reason)

    def run(
        self,
        capture: Capture,
        max_frames: int | None = None,
        heartbeat: Callable[[AgentStats], None] | None = None,
        heartbeat_s: float = 5.0,
    ) -> AgentStats:
        """Process frames until the source ends, `max_frames` were processed, or :meth:`stop`.

        `heartbeat` is called at the start and then every `heartbeat_s`, frames or not (a dead
        camera must still be reported).
        """
        self.stats = AgentStats()
        self._live = capture.reader.live
        next_beat = time.monotonic()
        self.loop_at = next_beat
        try:
            while not self._stop.is_set():
                self.loop_at = time.monotonic()
                self._apply_swap()  # also without frames (a dead camera), so the state reports the new model
                if heartbeat is not None and time.monotonic() >= next_beat:
                    heartbeat(self.stats)
                    next_beat = time.monotonic() + heartbeat_s
                frame = capture.next_frame(timeout=0.5)
                if frame is None:
                    if capture.finished:
                        break
                    continue  # a live camera is late or reconnecting: its status says so
                self.process(frame)
                if max_frames is not None and self.stats.frames >= max_frames:
                    break
        finally:
            self.loop_at = None
            if self.video is not None:
                self.video.close()
        return self.stats

    def process(self, frame: Frame) -> list[Decision]:
        """Run one frame through every stage; returns the decisions it produced."""
        started = time.monotonic()
        self._apply_swap()  # between frames: this whole frame runs on one model
        try:
            check_frame(frame.image)
            check_complete(frame.image)  # a half-decoded face must not be judged
        except InvalidFrameError as exc:
            self.stats.bad_frames += 1
            log.warning("frame %d skipped: %s", frame.seq, exc)
            return []
        self.stats.count_frame()
        with self.timings.measure("detect"):
            faces = self.detector.detect(frame.image)
        self.stats.faces += len(faces)
        with self.timings.measure("track"):
            update = self.tracker.update(faces, frame.timestamp)
        for track_id in update.gone:  # unconfirmed ones too: their evidence would pile up for ever
            self.policy.forget(track_id)
            self._decided.pop(track_id, None)
        with self.timings.measure("classify"):
            seen = self._classify(frame.image, update.tracks)
        # Decision latency runs from the first sighting to now: for a live source the wall clock,
        # for a recording its own clock plus the time this frame took to process.
        now = time.monotonic() if self._live else frame.timestamp + (time.monotonic() - started)
        decisions = []
        with self.timings.measure("decide"):
            for track, classification in seen:
                decision = self.policy.observe(track, classification, now, self.classifier.version)
                if decision is not None:
                    self._deliver(frame, track, decision)
                    decisions.append(decision)
        if self.video is not None:
            self.video.write(draw(frame.image, seen, self._decided))
        return decisions

    def _classify(self, image: np.ndarray, tracks: list[Track]) -> list[tuple[Track, Classification]]:
        """All faces of the frame in one classifier call; faces with nothing to crop are skipped."""
        cropped: list[tuple[Track, np.ndarray]] = []
        for track in tracks:
            try:
                crop = crop_face(image, track.face.box_to_crop, self.classifier.crop, self.box_calibration)
                cropped.append((track, crop))
            except EmptyCropError as exc:
                log.debug("track %d not classified: %s", track.track_id, exc)
        results = self.classifier.classify([crop for _, crop in cropped])
        return [(track, result) for (track, _), result in zip(cropped, results, strict=True)]

    def _deliver(self, frame: Frame, track: Track, decision: Decision) -> None:
        snapshot = None
        if self.snapshots is not None and decision.action in INCIDENT_ACTIONS:
            # Around the box the classifier saw: retraining reads the face back from the snapshot.
            box = self.box_calibration.apply(track.face.box_to_crop)
            snapshot = self.snapshots.save(frame.image, box, decision)
        with self.timings.measure("record"):
            event = self.sink.submit(decision, snapshot)
        self._decided[track.track_id] = decision
        self.stats.count_decision(decision)
        if self.on_decision is not None:
            self.on_decision(decision, event)
