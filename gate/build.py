"""Builds the agent's stages from the config: one place that knows which class serves which setting."""

from __future__ import annotations

from pathlib import Path

from maskgate.config import Config
from maskgate.gate.agent import Agent, DecisionSink
from maskgate.gate.annotate import VideoSink
from maskgate.gate.classifier import MaskClassifier
from maskgate.gate.detector import FaceDetector, MtcnnDetector
from maskgate.gate.policy import DecisionPolicy
from maskgate.gate.snapshots import SnapshotWriter
from maskgate.gate.tracker import Tracker, TrackerConfig


def make_detector(config: Config) -> FaceDetector:
    if config.detector.kind == "mtcnn-litert":
        from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector

        return LiteRtMtcnnDetector(config.detector)
    return MtcnnDetector(config.detector)  # the reference: needs TensorFlow


def make_tracker(config: Config) -> Tracker:
    return Tracker(
        TrackerConfig(min_hits=config.policy.min_track_hits, max_age_s=config.policy.track_max_age_s)
    )


def make_agent(
    config: Config,
    sink: DecisionSink,
    detector: FaceDetector | None = None,
    model: Path | None = None,
    annotate: Path | None = None,
    annotate_fps: float = 15.0,
) -> Agent:
    return Agent(
        detector=detector or make_detector(config),
        classifier=MaskClassifier(model or config.paths.active_model),
        tracker=make_tracker(config),
        policy=DecisionPolicy(config.policy, config.gate_id),
        sink=sink,
        snapshots=SnapshotWriter(config.paths.snapshots),
        video=VideoSink(annotate, annotate_fps) if annotate else None,
    )
