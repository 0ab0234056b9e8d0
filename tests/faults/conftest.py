"""A whole gate for the fault tests, and the checks every fault test ends with (issue #10).

A gate here is what runs at a door: the real MQTT link (its outbox in a real database), the
reference door controller, and a building system watching the events, all on the shared
Mosquitto under a private topic prefix. The agent is built on top with the real detector and the
shipped model (:func:`make_agent`). Every fault test ends with :meth:`Gate.check_delivery`: no
event lost, none duplicated, every door command answered once, no door opened after its
command's ``expires_at``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from maskgate.config import Config, PathsConfig, RolloutConfig
from maskgate.core import Decision, Event, Frame, utcnow
from maskgate.gate.agent import Agent
from maskgate.gate.comms import DoorLink
from maskgate.gate.doorsim import DoorSimulator
from maskgate.gate.sources import Capture, FrameReader, open_reader
from maskgate.store import EventStore, make_engine, migrate
from tests.gate.comms.brokers import Spy, make_config, wait_until
from tests.gate.comms.conftest import spy  # noqa: F401  (fixture: a watcher on the prefix of tests/conftest.py)
from tests.gate.test_agent import MODEL, clip, detector  # noqa: F401  (the real detector, module-wide)

SECRET = "fault-test-secret"  # commands and acks are signed, as in production
DECIDED_BY_FRAME = 15  # the clips' people are decided on by their 5th frame; a margin for a loaded machine


@dataclass
class Gate:
    """One gate's MQTT link, its door controller and a building system's view of its topics."""

    config: Config
    store: EventStore
    link: DoorLink
    door: DoorSimulator
    spy: Spy

    def events(self) -> list[Event]:
        return self.store.list_events(limit=1000).events

    def settle(self, timeout: float = 15.0) -> None:
        """Wait until the outbox is empty and every event has its door outcome."""
        assert self.link.wait_idle(timeout), self.link.outbox.counts()
        assert wait_until(lambda: all(e.door_status is not None for e in self.events()), timeout)

    def published_events(self) -> Counter[uuid.UUID]:
        """How often each event reached the building system."""
        topic = self.link.topics.events
        return Counter(uuid.UUID(json.loads(m.payload)["event_id"]) for m in self.spy.on(topic))

    def door_acks(self) -> list[dict]:
        return [json.loads(m.payload) for m in self.spy.on(self.link.topics.door_ack)]

    def states(self) -> list[dict]:
        return [json.loads(m.payload) for m in self.spy.on(self.link.topics.state) if m.payload]

    def check_delivery(
        self, decisions: Sequence[Decision], door_ahead_s: Mapping[uuid.UUID, float] | None = None
    ) -> None:
        """No event lost, no duplicate, no late door opening.

        Every decision is stored once and nothing else is; the building system received each
        event once; the door received each command once and acted on none twice; every event
        has its door outcome; every opening happened, in real time, before its command expired
        (`door_ahead_s`: how far the door's clock was ahead when it handled a command, if wrong).
        """
        ids = [d.decision_id for d in decisions]
        assert len(set(ids)) == len(ids), "the agent decided twice under one id"
        self.settle()
        assert sorted(e.event_id for e in self.events()) == sorted(ids), "stored events differ from decisions"
        assert wait_until(lambda: set(self.published_events()) >= set(ids), timeout=10)
        assert self.published_events() == Counter(ids), "an event was lost or published twice"
        assert Counter(self.door.received) == Counter(ids), "a command was lost or delivered twice"
        assert self.door.outcomes["duplicate"] == 0
        ahead = door_ahead_s or {}
        for opening in self.door.openings:
            opened_at = opening.opened_at - timedelta(seconds=ahead.get(opening.decision_id, 0.0))
            assert opened_at <= opening.expires_at, f"late opening: {opening}, door clock ahead {ahead}"


@pytest.fixture
def gate_store(sqlite_url: str) -> Iterator[EventStore]:
    """The gate's database: SQLite, as on a gate. A module may override it (e.g. with `store`)."""
    engine = make_engine(sqlite_url)
    migrate.upgrade(engine)
    yield EventStore(engine)
    engine.dispose()


MakeGate = Callable[..., Gate]


@pytest.fixture
def make_gate(prefix: str, spy: Spy, gate_store: EventStore, tmp_path: Path) -> Iterator[MakeGate]:  # noqa: F811
    """Start a gate: `door_clock` is the door controller's clock, `on_active_model` the link's model hook."""
    started: list[Gate] = []

    def factory(
        *,
        door_clock: Callable[[], datetime] = utcnow,
        on_active_model: Callable | None = None,
        **mqtt,
    ) -> Gate:
        # A gate id of its own: MQTT client ids derive from it, and the shared broker drops a
        # client when another (another test session's gate-1) connects under the same id.
        gate_id = f"fault-{uuid.uuid4().hex[:8]}"
        base = make_config(prefix, gate_id, command_secret=SECRET, **mqtt)
        config = replace(
            base,
            paths=PathsConfig(active_model=MODEL, snapshots=tmp_path / "snapshots"),
            rollout=RolloutConfig(cache=tmp_path / "model-cache"),
        )
        door = DoorSimulator(config, gate_id, open_s=0.05, clock=door_clock, reconnect_max_s=0.5)
        link = DoorLink(config, gate_store, on_active_model=on_active_model, reconnect_max_s=0.5)
        gate = Gate(config, gate_store, link, door, spy)
        started.append(gate)
        door.start()
        link.start()
        assert door.client.wait_connected(10) and link.client.wait_connected(10)
        time.sleep(0.3)  # the door's subscription is in place before the first command
        return gate

    yield factory
    for gate in started:
        gate.link.stop()
        gate.door.stop()


def run_reader(agent: Agent, reader: FrameReader, max_frames: int | None = None, **capture) -> list[Decision]:
    """Run `agent` on `reader` (to its end, or `max_frames` processed); the decisions it made."""
    source = Capture(reader, **capture).start()
    try:
        return agent.run(source, max_frames).decisions
    finally:
        source.stop()


def clip_frames(name: str, limit: int | None = None) -> list[np.ndarray]:
    """A shared clip's frames, RGB (or its first `limit`)."""
    reader = open_reader(str(clip(name)))
    reader.open()
    frames = []
    while (limit is None or len(frames) < limit) and (image := reader.read()) is not None:
        frames.append(image)
    reader.close()
    return frames


def run_clip(agent: Agent, name: str, max_frames: int | None = DECIDED_BY_FRAME) -> list[Decision]:
    """The first frames of a shared clip (enough for its person to be decided on), as a recording."""
    return run_reader(agent, open_reader(str(clip(name))), max_frames)


def next_person(agent: Agent) -> None:
    """The doorway stays empty for longer than a track lives, so the next clip's person is someone new.

    Run again at once, the same clip would continue the same person's track, who was decided on
    already and is not again. An empty frame after the pause ends that track (without one, the
    tracker would match the next face to it: see test_camera.py). A recording's frames are timed
    by its frame rate from when its capture starts, so the last run's were up to
    DECIDED_BY_FRAME / 25 fps = 0.6 s ahead of the wall clock.
    """
    time.sleep(agent.tracker.config.max_age_s + 1.0)
    agent.process(Frame(np.zeros((480, 640, 3), np.uint8), 0, time.monotonic()))
