"""The agent around its frame loop: a loop stuck in a frame is reported by /healthz and the metrics keep
reading (none freezes), the frame rate is that of the last seconds, every part stops within one
deadline even when some hang or fail, and a long run keeps counts, not every decision.

`maskgate agent` (run_agent) runs here with fakes for the slow or external parts (detector,
classifier, broker link, databases, model watcher); the Agent, its tracker and policy, the Capture
(where not replaced) and the metrics server are the real ones.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from maskgate.config import Config, PolicyConfig
from maskgate.const import EXIT_OK
from maskgate.core import LABELS, Action, Box, Classification, Decision, Event, Face, Frame, Label
from maskgate.crop import CropSpec
from maskgate.gate import agent as gate_agent
from maskgate.gate import build, cli, sources
from maskgate.gate import metrics as gate_metrics
from maskgate.gate.agent import Agent, AgentStats
from maskgate.gate.policy import DecisionPolicy
from maskgate.gate.sources import Capture, SourceError
from maskgate.gate.tracker import Tracker, TrackerConfig
from maskgate.modelcard import ModelCard
from tests.gate.comms.brokers import free_port, wait_until

IMAGE = np.full((480, 640, 3), 120, np.uint8)


class FakeDetector:
    """One large, sure face per frame."""

    def detect(self, image: np.ndarray) -> list[Face]:
        return [Face(Box(100, 100, 220, 220), 0.99)]


class FakeClassifier:
    """Says "with mask", sure of it."""

    version = "fake-1"

    def __init__(self):
        self.crop = CropSpec(size=32)
        self.card = ModelCard(self.version, LABELS, self.crop, "fake", "2026-01-01T00:00:00+00:00")

    def classify(self, crops):
        return [
            Classification({label: 0.9 if label is Label.WITH_MASK else 0.05 for label in Label})
            for _ in crops
        ]


def fake_agent(sink, gate_id: str = "gate-h") -> Agent:
    return Agent(
        detector=FakeDetector(),
        classifier=FakeClassifier(),
        tracker=Tracker(TrackerConfig(min_hits=3, max_age_s=1.5)),
        policy=DecisionPolicy(PolicyConfig(), gate_id),
        sink=sink,
    )


class LiveCamera:
    """A camera at 30 fps that can be unplugged."""

    live = True
    name = "fake camera"
    fps = 30.0

    def __init__(self):
        self.unplugged = threading.Event()

    def open(self) -> None:
        if self.unplugged.is_set():
            raise SourceError("fake camera unplugged")

    def read(self) -> np.ndarray:
        if self.unplugged.is_set():
            raise SourceError("fake camera unplugged")
        time.sleep(1 / 30)
        return IMAGE

    def close(self) -> None:
        pass


class Link:
    """The door link as run_agent sees it; `on_submit` is called in the agent loop."""

    def __init__(self, on_submit=None):
        self.connected = True
        self.pending = 0
        self.on_submit = on_submit
        self.outbox = SimpleNamespace(counts=lambda: SimpleNamespace(pending=self.pending))
        self.stop_calls: list[float] = []

    def start(self) -> None:
        pass

    def stop(self, drain_s: float = 2.0, join_s: float = 5.0) -> None:
        self.stop_calls.append(drain_s)

    def publish_state(self, *, camera_ok: bool, fps: float, model_version: str) -> None:
        pass

    def submit(self, decision: Decision, snapshot_path: str | None = None) -> Event:
        if self.on_submit is not None:
            self.on_submit(decision)
        return Event.from_decision(decision, snapshot_path)


class Watcher:
    def attach(self, agent) -> None:
        pass

    def start(self):
        return self

    def offer(self, message) -> None:
        pass

    def request_stop(self) -> None:
        pass

    def join(self, timeout: float) -> bool:
        return True

    def stop(self, timeout: float = 10.0) -> bool:
        return True


class Stores:
    def __init__(self, forwarder=None):
        self.store = None
        self.forwarder = forwarder

    def central_ok(self) -> bool:
        return True

    def spool_ok(self) -> bool:
        return True


@pytest.fixture
def harness(monkeypatch):
    """Patches run_agent's builders; the test sets `link`, `reader`, `stores` and `make` as it needs."""
    port = free_port()
    h = SimpleNamespace(
        port=port,
        base=f"http://127.0.0.1:{port}",
        config=replace(Config(), gate_id="gate-h", metrics_port=port),
        link=Link(),
        watcher=Watcher(),
        reader=LiveCamera(),
        stores=Stores(),
        agent=None,
    )

    def make(config, sink, detector, model, annotate):
        h.agent = fake_agent(sink, config.gate_id)
        return h.agent

    h.make = make
    monkeypatch.setattr(build, "make_detector", lambda config: FakeDetector())
    monkeypatch.setattr(build, "open_gate_store", lambda config: h.stores)
    monkeypatch.setattr(build, "make_agent", lambda *args: h.make(*args))
    monkeypatch.setattr(sources, "open_reader", lambda spec, camera=None, detector=None: h.reader)
    monkeypatch.setattr(cli, "_model_watcher", lambda config: h.watcher)
    monkeypatch.setattr(cli, "_door_link", lambda config, store, watcher, wake=None: h.link)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield h
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def run(h) -> int:
    args = argparse.Namespace(
        source="0",
        model=None,
        annotate=None,
        max_frames=None,
        realtime=False,
        no_mqtt=False,
        door_from_recording=False,
    )
    return cli.run_agent(args, h.config)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def health(base: str) -> tuple[int, dict[str, bool]]:
    status, body = get(f"{base}/healthz")
    return status, json.loads(body)["checks"]


def gauges(base: str) -> dict[str, float]:
    text = get(f"{base}/metrics")[1]
    return {name: float(value) for name, value in re.findall(r"^(maskgate_\w+) (\S+)$", text, re.MULTILINE)}


# -- a stuck frame loop --------------------------------------------------------------------------------


def test_a_frame_loop_stuck_in_a_decision_fails_healthz_and_the_gauges_keep_reading(harness, monkeypatch):
    monkeypatch.setattr(gate_metrics, "AGENT_STALLED_AFTER_S", 1.0, raising=False)  # 10 s in production
    h, seen = harness, {}

    def stuck(decision: Decision) -> None:
        """The sink waits (a locked SQLite spool, a hung PostgreSQL): no frame, no door command."""
        if seen:
            return
        # The camera still delivers (to the capture thread), the databases and the broker answer.
        everything_else_fine = {"agent": False, "camera": True, "database": True, "broker": True}
        seen["reported"] = wait_until(lambda: health(h.base) == (503, everything_else_fine), timeout=60)
        seen["health"] = health(h.base)
        # Meanwhile the camera goes, the broker goes, the outbox fills: the gauges must say so now,
        # not what the last heartbeat of the stuck loop wrote; and nothing is processed: 0 fps.
        h.reader.unplugged.set()
        h.link.connected, h.link.pending = False, 7
        expected = {
            "maskgate_camera_ok": 0.0,
            "maskgate_broker_connected": 0.0,
            "maskgate_outbox_pending": 7.0,
            "maskgate_fps": 0.0,
        }
        seen["read"] = wait_until(
            lambda: {k: gauges(h.base).get(k) for k in expected} == expected, timeout=60, interval=0.2
        )
        seen["gauges"] = {name: gauges(h.base).get(name) for name in expected}
        h.agent.stop()

    h.link.on_submit = stuck
    assert run(h) == EXIT_OK
    assert seen["reported"], seen["health"]
    assert seen["read"], seen["gauges"]


def test_an_agent_whose_recording_ended_is_not_stuck():
    class Clip:
        live, name, fps = False, "clip", 30.0

        def __init__(self):
            self.left = 3

        def open(self) -> None:
            pass

        def read(self):
            self.left -= 1
            return IMAGE if self.left >= 0 else None

        def close(self) -> None:
            pass

    agent = fake_agent(Link())
    assert agent.loop_stalled_s() == 0.0  # not started
    during: list[float] = []
    capture = Capture(Clip()).start()
    try:
        agent.run(capture, heartbeat=lambda stats: during.append(agent.loop_stalled_s()), heartbeat_s=0)
    finally:
        capture.stop()
    assert agent.stats.frames == 3 and during
    assert all(0 <= stalled < gate_metrics.AGENT_STALLED_AFTER_S for stalled in during)
    time.sleep(0.05)
    assert agent.loop_stalled_s() == 0.0  # ended, not stuck
    assert gate_metrics.loop_check(agent.loop_stalled_s)()


# -- the frame rate -------------------------------------------------------------------------------------


def test_fps_is_the_rate_of_the_last_seconds_and_the_average_is_the_whole_run():
    now = [1000.0]
    stats = AgentStats(clock=lambda: now[0])
    for _ in range(30 * 600):  # ten minutes at 30 fps
        now[0] += 1 / 30
        stats.count_frame()
    assert stats.fps == pytest.approx(30, rel=0.02)
    now[0] += 3600  # then an hour without a frame
    assert stats.fps == 0.0
    assert stats.average_fps == pytest.approx(30 * 600 / 4200, rel=0.01)


# -- shutdown ------------------------------------------------------------------------------------------


def test_every_part_stops_within_one_deadline_though_some_hang_and_one_fails(
    harness, monkeypatch, capsys, caplog
):
    budget = 1.0
    monkeypatch.setattr(cli, "STOP_BUDGET_S", budget, raising=False)
    never = threading.Event()  # what the hanging parts wait for
    waits: dict[str, list[float | None]] = {"capture": [], "watcher": [], "forwarder": []}
    asked: list[str] = []

    class HangingCapture:
        """A read that never returns (a stream gone silent)."""

        def __init__(self, reader, camera=None):
            self.reader = reader
            self.status = SimpleNamespace(ok=True, frames=0, last_error="")

        def start(self):
            return self

        def request_stop(self) -> None:
            asked.append("capture")

        def join(self, timeout: float) -> bool:
            waits["capture"].append(timeout)
            return never.wait(min(timeout, 30))

        def stop(self, timeout: float = 5.0) -> bool:
            self.request_stop()
            return self.join(timeout)

    class DownloadingWatcher(Watcher):
        """Busy loading a model."""

        def request_stop(self) -> None:
            asked.append("watcher")

        def join(self, timeout: float) -> bool:
            waits["watcher"].append(timeout)
            return never.wait(min(timeout, 30))

        def stop(self, timeout: float = 10.0) -> bool:
            self.request_stop()
            return self.join(timeout)

    class FailingLink(Link):
        def stop(self, drain_s: float = 2.0, join_s: float = 5.0) -> None:
            asked.append("link")
            raise RuntimeError("database is locked")

    class HungForwarder:
        """Its thread is stuck on a central database that does not answer."""

        def start(self):
            return self

        def wake(self) -> None:
            pass

        def stop(self, drain_s: float = 2.0, timeout: float | None = None) -> bool:
            asked.append("forwarder")
            waits["forwarder"].append(timeout)
            return never.wait(30 if timeout is None else min(timeout, 30))

        def pending(self) -> int:
            return 2

        def quarantined(self) -> int:
            return 0

    class StoppedAgent:
        """Its run ends at once, as when SIGTERM arrives."""

        classifier = FakeClassifier()
        video = None
        on_decision = None
        stats = AgentStats()
        timings = SimpleNamespace(listeners=[], format=lambda: "-")

        def run(self, capture, max_frames=None, heartbeat=None):
            return AgentStats()

        def stop(self) -> None:
            pass

        def loop_stalled_s(self) -> float:
            return 0.0

    h = harness
    monkeypatch.setattr(sources, "Capture", HangingCapture)
    h.make = lambda *args: StoppedAgent()
    h.watcher, h.link, h.stores = DownloadingWatcher(), FailingLink(), Stores(HungForwarder())
    started = time.monotonic()
    assert run(h) == EXIT_OK  # the link's failure did not escape
    elapsed = time.monotonic() - started
    assert sorted(asked) == ["capture", "forwarder", "link", "watcher"]
    assert "stopping the door link failed" in caplog.text
    assert "2 events wait in the spool" in capsys.readouterr().out  # what comes after the failure ran
    # Nothing was waited for without a limit, or for longer than the budget; one by one the hanging
    # parts would have taken 5 + 10 s and the forwarder for ever.
    every_wait = [w for part in waits.values() for w in part]
    assert every_wait and all(w is not None and w <= budget for w in every_wait), waits
    assert elapsed < 10 * budget + 5, elapsed
    with pytest.raises(urllib.error.URLError):  # the metrics server stopped too
        get(f"{h.base}/healthz")


# -- what a long run keeps -------------------------------------------------------------------------------


def test_a_long_run_counts_its_decisions_and_keeps_only_the_latest(monkeypatch):
    agent = fake_agent(Link())
    made: list[Decision] = []

    def observe(track, classification, now, version):  # a decision on every frame
        made.append(Decision("gate-h", track.track_id, Action.ALLOW, Label.WITH_MASK, 0.9, {}, version, 100))
        return made[-1]

    monkeypatch.setattr(agent.policy, "observe", observe)
    kept = gate_agent.RECENT_DECISIONS
    for seq in range(kept + 50):
        agent.process(Frame(IMAGE, seq, seq / 30))
    assert len(made) > kept
    assert len(agent.stats.decisions) == kept and agent.stats.decisions == made[-kept:]
    assert agent.stats.decided == len(made)
