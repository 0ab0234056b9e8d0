"""Builds the agent's stages from the config: one place that knows which class serves which setting."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from maskgate.config import Config, DetectorConfig
from maskgate.gate.agent import Agent, DecisionSink
from maskgate.gate.annotate import VideoSink
from maskgate.gate.classifier import MaskClassifier
from maskgate.gate.detector import (
    FaceDetector,
    MtcnnDetector,
    StockFirstDetector,
    box_calibration,
    detector_folder,
    folder_calibration,
    stock_nets_config,
)
from maskgate.gate.policy import DecisionPolicy
from maskgate.gate.snapshots import SnapshotWriter
from maskgate.gate.tracker import Tracker, TrackerConfig
from maskgate.store import DatabaseUnavailable, EventStore, make_engine, migrate
from maskgate.store.db import database_answers, parse_database_url
from maskgate.store.spool import SpoolForwarder, prepare_spool

log = logging.getLogger(__name__)


def make_detector(config: Config) -> FaceDetector:
    settings = config.detector
    if not settings.with_stock or not settings.model:
        if settings.with_stock:
            log.warning("detector.with_stock is set without detector.model: the stock nets run alone")
        return _detector_of_kind(settings)
    from maskgate.gate.face_check import FaceCheckNet, has_face_check
    from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector

    stock = stock_nets_config(settings)
    stock_nets = _detector_of_kind(stock)
    folder = detector_folder(settings)
    if settings.stock_check == 0:
        log.warning(
            "detector.stock_check is 0: every face the nets of %s add is kept unchecked, false ones "
            "too (a wall counted toward opening the door at a check of 0.05; docs/detector.md)",
            settings.model,
        )
    elif settings.face_check > 0 and settings.face_check_floor >= settings.stock_check:
        log.warning(
            "detector.face_check_floor (%s) is not under detector.stock_check (%s): "
            "the face-check net is never asked",
            settings.face_check_floor,
            settings.stock_check,
        )
    return StockFirstDetector(
        tuned=_detector_of_kind(settings),
        stock=stock_nets,
        tuned_calibration=folder_calibration(folder),
        stock_calibration=folder_calibration(detector_folder(stock)),
        # The check is LiteRT's ONet whatever the kind: the reference gives the same scores.
        checker=stock_nets if isinstance(stock_nets, LiteRtMtcnnDetector) else LiteRtMtcnnDetector(stock),
        stock_check=settings.stock_check,
        calibrated=settings.box_calibration,
        face_check=FaceCheckNet(folder) if settings.face_check > 0 and has_face_check(folder) else None,
        face_check_threshold=settings.face_check,
        face_check_floor=settings.face_check_floor,
    )


def _detector_of_kind(config: DetectorConfig) -> FaceDetector:
    if config.kind == "mtcnn-litert":
        from maskgate.gate.mtcnn_litert import LiteRtMtcnnDetector

        return LiteRtMtcnnDetector(config)
    return MtcnnDetector(config)  # the reference: needs TensorFlow


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
        box_calibration=box_calibration(config.detector),
    )


@dataclass(frozen=True)
class GateStore:
    """Where the agent records its events, and how they reach the central database."""

    store: EventStore  # the spool when there is one, else the central database
    central: Engine
    forwarder: SpoolForwarder | None  # None: the agent writes to the central database itself

    def central_ok(self) -> bool:
        """Whether the central database answers (the forwarder's view, so never a blocking probe)."""
        if self.forwarder is not None:
            return self.forwarder.connected
        return database_answers(self.central)

    def spool_ok(self) -> bool:
        """Whether the local spool answers; always true without one."""
        return self.forwarder is None or database_answers(self.store.engine)


def spool_url(config: Config) -> str | None:
    """The spool's SQLite URL, or None when it is off or is the central database itself."""
    if not config.paths.spool:
        return None
    spool = Path(config.paths.spool)
    central = parse_database_url(config.database_url)
    same_file = (
        central.get_backend_name() == "sqlite"
        and central.database not in (None, "", ":memory:")
        and Path(central.database).resolve() == spool.resolve()
    )
    return None if same_file else f"sqlite:///{spool}"


def open_gate_store(config: Config) -> GateStore:
    """The agent's store. With a spool, the central database may be down now: it is checked, not required.

    Raises the store's errors for a spool that cannot be prepared, a central schema at the wrong
    revision, or (without a spool) an unreachable central database.
    """
    central = make_engine(config.database_url)
    url = spool_url(config)
    if url is None:
        migrate.require_head(central)
        return GateStore(EventStore(central), central, None)
    local = make_engine(url)
    prepare_spool(local)
    with contextlib.suppress(DatabaseUnavailable):  # the forwarder logs the outage and keeps trying
        migrate.require_head(central)
    forwarder = SpoolForwarder(local, EventStore(central), config.gate_id)
    return GateStore(EventStore(local), central, forwarder)
