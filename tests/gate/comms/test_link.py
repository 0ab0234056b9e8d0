"""DoorLink -> real Mosquitto (127.0.0.1:1883) -> door controller -> ack -> the event in the store.

The `store` fixture runs each test on SQLite and on the real PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy.exc import OperationalError

from maskgate.config import Config
from maskgate.core import AckReason, Action, DoorStatus, Event, Label, utcnow
from maskgate.gate.comms import (
    ActiveModel,
    DoorLink,
    MqttClient,
    publish_active_model,
    subscribe_active_model,
)
from maskgate.gate.comms.client import BrokerSettings
from maskgate.gate.comms.payloads import DoorAck, event_payload, parse_door_command
from maskgate.gate.doorsim import DoorSimulator
from maskgate.store import EventStore, OutboxKind, OutgoingMessage, make_engine, migrate
from tests.gate.comms.brokers import ROOT, SYSTEM_PORT, Spy, make_config, make_decision, wait_until
from tests.store.test_spool import Outage

pytestmark = pytest.mark.integration

SECRET = "gate-secret-for-tests"


@pytest.fixture
def gate_id() -> str:
    return f"g{uuid.uuid4().hex[:8]}"


Start = Callable[..., tuple[DoorLink, DoorSimulator | None]]


@pytest.fixture
def start(store: EventStore, prefix: str, gate_id: str) -> Iterator[Start]:
    """Start a door link (and by default a door controller) for this test's gate; stopped after."""
    running: list[DoorLink | DoorSimulator] = []

    def starter(
        door: bool = True, door_secret: str | None = None, hooks: dict | None = None, **mqtt
    ) -> tuple[DoorLink, DoorSimulator | None]:
        config = make_config(prefix, gate_id, **mqtt)
        controller = None
        if door:
            door_config = (
                config if door_secret is None else make_config(prefix, gate_id, command_secret=door_secret)
            )
            controller = DoorSimulator(door_config, gate_id, open_s=0.2)
            controller.start()
            running.append(controller)
            assert controller.client.wait_connected(5)
        link = DoorLink(config, store, **(hooks or {}))
        link.start()
        running.append(link)
        assert link.client.wait_connected(5)
        wait_until(lambda: False, timeout=0.1)  # subscriptions settle
        return link, controller

    yield starter
    for part in reversed(running):
        part.stop()


def door_status(store: EventStore, event: Event, timeout: float = 5.0) -> Event:
    wait_until(lambda: store.get_event(event.event_id).door_status is not None, timeout)
    return store.get_event(event.event_id)


def test_submit_to_door_to_ack_recorded_on_the_event(start, store, spy, prefix, gate_id):
    seen: list[Event] = []
    link, door = start(command_secret=SECRET, hooks={"on_door_status": seen.append})
    outcomes, submitted = {}, {}
    for label in Label:
        event = link.submit(make_decision(gate_id, label=label), snapshot_path=None)
        assert event.door_status is None  # returned at once; the door answers later
        submitted[event.event_id] = event
        outcomes[label] = door_status(store, event)
    opened = outcomes[Label.WITH_MASK]
    assert opened.door_status is DoorStatus.OPENED and not opened.is_incident
    assert 0 < opened.door_rtt_ms < 1000 and opened.door_at is not None
    assert outcomes[Label.WITHOUT_MASK].door_status is DoorStatus.REFUSED
    assert outcomes[Label.IMPROPER_MASK].door_status is DoorStatus.REFUSED
    # the controller's reason is kept with the outcome: why the door stayed shut
    reasons = {label: outcome.door_reason for label, outcome in outcomes.items()}
    assert reasons == {
        Label.WITH_MASK: AckReason.OPENED,
        Label.WITHOUT_MASK: AckReason.DENIED,
        Label.IMPROPER_MASK: AckReason.WARNED,
    }
    assert door.relay.openings == 1 and door.outcomes["opened"] == 1 and door.outcomes["refused"] == 2
    assert wait_until(lambda: len(seen) == 3)
    assert {e.event_id for e in seen} == {e.event_id for e in outcomes.values()}

    commands = spy.wait_for(f"{prefix}/{gate_id}/door/command", 3)
    for message in commands:
        assert not message.retain  # a retained "open" would be an unlocked door
        command = parse_door_command(message.payload, SECRET)  # signed
        assert 1 <= message.properties.MessageExpiryInterval <= 3
        assert message.properties.ResponseTopic == f"{prefix}/{gate_id}/door/ack"
        assert message.properties.CorrelationData == str(command.decision_id).encode()
    events = spy.wait_for(f"{prefix}/{gate_id}/events", 3)
    published = {json.loads(m.payload)["event_id"]: json.loads(m.payload) for m in events}
    assert published == {str(event_id): event_payload(event) for event_id, event in submitted.items()}
    acks = spy.wait_for(f"{prefix}/{gate_id}/door/ack", 3)
    assert {json.loads(m.payload)["reason"] for m in acks} == {"opened", "denied", "warned"}
    assert link.wait_idle(2) and link.outbox.counts().pending == 0


def test_no_door_controller_is_a_no_ack_incident(start, store, gate_id):
    link, _ = start(door=False, ack_timeout_s=0.5)
    event = link.submit(make_decision(gate_id, action=Action.ALLOW))
    stored = door_status(store, event, timeout=5)
    assert stored.door_status is DoorStatus.NO_ACK and stored.door_rtt_ms is None
    assert stored.door_reason is None and stored.is_incident
    assert link.outbox.counts().sent == 2  # it was sent; nobody answered


def test_a_forged_command_is_refused_and_the_door_stays_shut(start, store, gate_id, caplog):
    # The controller holds another secret: to it the gate's commands look forged.
    link, door = start(command_secret=SECRET, door_secret="not-the-gate-secret", ack_timeout_s=0.7)
    with caplog.at_level(logging.WARNING):
        event = link.submit(make_decision(gate_id, action=Action.ALLOW))
        stored = door_status(store, event)
    assert door.relay.openings == 0 and door.outcomes["refused"] == 1
    # Its "refused" ack is signed with its own secret, which the gate rejects in turn: no_ack.
    assert stored.door_status is DoorStatus.NO_ACK
    assert any("bad signature" in r.getMessage() and "door command" in r.getMessage() for r in caplog.records)
    assert any("bad signature" in r.getMessage() and "door ack" in r.getMessage() for r in caplog.records)


def test_resubmitting_a_decision_stores_and_sends_it_once(start, store, spy, prefix, gate_id):
    link, door = start()
    decision = make_decision(gate_id)
    first = link.submit(decision)
    door_status(store, first)
    again = link.submit(decision)
    assert again.door_status is DoorStatus.OPENED  # the stored event, with its outcome
    assert link.wait_idle(2)
    assert len(spy.wait_for(f"{prefix}/{gate_id}/door/command", 1)) == 1
    assert door.relay.openings == 1


def test_a_decision_for_another_gate_is_refused(start, gate_id):
    link, _ = start(door=False)
    with pytest.raises(ValueError, match="submitted to gate"):
        link.submit(make_decision("other-gate"))


def test_availability_state_and_clean_stop(start, store, prefix, gate_id):
    link, _ = start(door=False)
    availability, state_topic = f"{prefix}/{gate_id}/availability", f"{prefix}/{gate_id}/state"
    watcher = Spy(SYSTEM_PORT, [availability, state_topic])
    try:
        (online,) = watcher.wait_for(availability)
        assert online.payload == b"online" and online.retain
        state = link.publish_state(camera_ok=True, fps=14.2, model_version="m-7")
        assert state.outbox_pending == 0
        assert json.loads(watcher.wait_for(state_topic)[-1].payload)["fps"] == 14.2
        link.stop()
        assert watcher.wait_for(availability, 2)[-1].payload == b"stopped"
    finally:
        watcher.close()
    late_joiner = Spy(SYSTEM_PORT, [availability, state_topic])
    try:
        (stopped,) = late_joiner.wait_for(availability)
        (retained_state,) = late_joiner.wait_for(state_topic)
        assert stopped.retain and stopped.payload == b"stopped"
        assert retained_state.retain and json.loads(retained_state.payload)["model_version"] == "m-7"
    finally:
        late_joiner.close()


def test_stop_with_the_database_down_disconnects_cleanly_and_logs_the_lost_door_outcome(
    start, store, prefix, gate_id, monkeypatch, caplog
):
    """The door opened and acked, but the database fails from then on: stop() must still say
    "stopped" (not leave the broker to send "offline") and name the door outcome it could not keep."""
    link, door = start()
    availability = f"{prefix}/{gate_id}/availability"
    watcher = Spy(SYSTEM_PORT, [availability])
    failing = OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))

    def database_down(*_args, **_kwargs):
        raise failing

    try:
        monkeypatch.setattr(store, "set_door_status", database_down)
        event = link.submit(make_decision(gate_id, action=Action.ALLOW))
        assert wait_until(lambda: link._unrecorded)  # opened, acked, not recorded
        assert door.relay.openings == 1
        monkeypatch.setattr(link.outbox, "counts", database_down)
        with caplog.at_level(logging.WARNING):
            link.stop(drain_s=0.3)  # does not raise
        assert watcher.wait_for(availability, 2)[-1].payload == b"stopped"
        lost = [r.getMessage() for r in caplog.records if str(event.event_id) in r.getMessage()]
        assert len(lost) == 1 and "opened" in lost[0] and "lost on stop" in lost[0]
        assert store.get_event(event.event_id).door_status is None
    finally:
        watcher.close()


def test_the_broker_publishes_offline_when_the_gate_dies(tmp_path, prefix, gate_id):
    availability = f"{prefix}/{gate_id}/availability"
    watcher = Spy(SYSTEM_PORT, [availability])
    script = textwrap.dedent(
        f"""
        import os, time
        from maskgate.config import Config, MqttConfig
        from maskgate.gate.comms import DoorLink
        from maskgate.store import EventStore, make_engine, migrate
        engine = make_engine("sqlite:///{tmp_path}/gate.sqlite")
        migrate.upgrade(engine)
        config = Config(gate_id="{gate_id}", mqtt=MqttConfig(topic_prefix="{prefix}", keepalive_s=2))
        link = DoorLink(config, EventStore(engine))
        link.start()
        assert link.client.wait_connected(5)
        time.sleep(0.3)
        os._exit(9)  # no clean disconnect: the broker sends the Last Will
        """
    )
    try:
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60, check=False)
        payloads = [m.payload for m in watcher.wait_for(availability, 2, timeout=10)]
        assert payloads[:2] == [b"online", b"offline"]
    finally:
        watcher.close()


def test_home_assistant_discovery_is_resent_when_home_assistant_comes_online(start, gate_id, caplog):
    discovery = f"homeassistant/sensor/maskgate_{gate_id}/+/config"
    watcher = Spy(SYSTEM_PORT, [discovery])
    try:
        start(door=False, homeassistant_discovery=True)
        assert wait_until(lambda: len(watcher.messages) == 5)
        with caplog.at_level(logging.WARNING):
            watcher.publish("homeassistant/status", b"rebooting")  # not a status: logged, ignored
        watcher.publish("homeassistant/status", b"online")
        assert wait_until(lambda: len(watcher.messages) == 10)
        config = json.loads(watcher.messages[-1].payload)
        assert config["device"]["identifiers"] == [f"maskgate_{gate_id}"]
        assert not any(m.retain for m in watcher.messages)
        assert any("homeassistant status" in r.getMessage() for r in caplog.records)
    finally:
        watcher.close()


def test_active_model_announcement_reaches_gates(start, prefix, gate_id, caplog):
    received: list[ActiveModel] = []
    start(door=False, hooks={"on_active_model": received.append})
    other: list[ActiveModel] = []
    config = make_config(prefix, gate_id)
    listener = MqttClient(BrokerSettings.from_config(config.mqtt), f"listener-{gate_id}")
    subscribe_active_model(listener, prefix, other.append)
    listener.start()
    try:
        assert listener.wait_connected(5)
        model = ActiveModel("2026.05.01-2", "b" * 64, "c" * 64, "models/2026.05.01-2")
        publish_active_model(config, model)
        assert wait_until(lambda: received and other)
        assert received[-1].version == other[-1].version == "2026.05.01-2"
        with caplog.at_level(logging.WARNING):
            spy = Spy(SYSTEM_PORT)
            spy.publish(f"{prefix}/models/active", b'{"v":1,"version":"x"}', retain=True)
            spy.close()
            assert wait_until(lambda: any("active model" in r.getMessage() for r in caplog.records))
        assert len(received) == 1  # the broken announcement was not passed on
    finally:
        listener.stop()


def test_garbage_on_every_subscribed_topic_is_logged_and_survived(start, store, prefix, gate_id, caplog):
    link, door = start(homeassistant_discovery=True)
    garbage = [
        b"",
        b"\x00\xff",
        b"{",
        b"[]",
        b'{"v":1}',
        b"x" * 70_000,
        json.dumps({"decision_id": 5}).encode(),
    ]
    topics = [f"{prefix}/{gate_id}/door/command", f"{prefix}/{gate_id}/door/ack", "homeassistant/status"]
    spy = Spy(SYSTEM_PORT)
    with caplog.at_level(logging.WARNING):
        for topic in topics:
            for payload in garbage:
                spy.publish(topic, payload)
        assert wait_until(lambda: sum("REJECTED" in r.getMessage() for r in caplog.records) >= 6)
    spy.close()
    assert link.connected and door.client.connected
    event = link.submit(make_decision(gate_id))
    assert door_status(store, event).door_status is DoorStatus.OPENED  # both still work


def test_config_errors_are_clear(store):
    from maskgate.config import MqttConfig
    from maskgate.gate.comms import MqttConfigError

    for mqtt, message in [
        (MqttConfig(url="http://broker"), "use mqtt://"),
        (MqttConfig(url="mqtt://user:pw@broker"), "credentials"),
        (MqttConfig(url="mqtts://broker", ca_file="/nonexistent/ca.crt"), "no file"),
        (MqttConfig(door_command_ttl_s=0), "door_command_ttl_s"),
        (MqttConfig(door_command_ttl_s=120), "door_command_ttl_s"),
    ]:
        with pytest.raises(MqttConfigError, match=message):
            DoorLink(Config(mqtt=mqtt), store)


def test_a_restart_right_after_a_command_still_records_what_became_of_it(store, prefix, gate_id):
    """systemd restarts the agent (RestartSec=2) within the ack timeout of two commands it sent: the
    new run waits for their acks from when they were sent, records the controller's ack for one and
    no_ack for the other, and a late ack for that one still replaces no_ack."""
    config = make_config(prefix, gate_id, ack_timeout_s=2.0)
    first = DoorLink(config, store)
    first.start()
    assert first.client.wait_connected(5)
    answered, silent = first.submit(make_decision(gate_id)), first.submit(make_decision(gate_id))
    assert wait_until(lambda: first.outbox.counts().sent == 4)
    first.stop(drain_s=0)  # the acks it waited for die with it
    second = DoorLink(config, store)
    second.start()
    controller = Spy(SYSTEM_PORT)  # the door controller's acks, by hand

    def opened(event: Event) -> None:
        ack = DoorAck(event.event_id, gate_id, DoorStatus.OPENED, utcnow(), AckReason.OPENED)
        controller.publish(f"{prefix}/{gate_id}/door/ack", ack.encode())

    try:
        assert second.client.wait_connected(5)
        wait_until(lambda: False, timeout=0.1)  # its subscription settles
        opened(answered)
        assert door_status(store, answered).door_status is DoorStatus.OPENED
        timed_out = door_status(store, silent)
        assert timed_out.door_status is DoorStatus.NO_ACK and timed_out.is_incident
        opened(silent)
        assert wait_until(lambda: store.get_event(silent.event_id).door_status is DoorStatus.OPENED)
    finally:
        controller.close()
        second.stop()


def test_a_command_that_expires_while_the_outbox_waits_is_never_published(sqlite_url, prefix, gate_id, spy):
    """Reading the outbox can wait up to 30 s for SQLite's write lock (a purge, the dashboard on a
    shared file): a door command that expired meanwhile is not published, it expires unsent."""
    engine = make_engine(sqlite_url)
    migrate.upgrade(engine)
    store = EventStore(engine)
    link = DoorLink(make_config(prefix, gate_id, door_command_ttl_s=1.0), store)
    link.client.start()  # no worker: this test runs the cycles
    try:
        assert link.client.wait_connected(5)
        # An old command that expired unsent (the broker was down): expiring it writes, so waits.
        link.submit(make_decision(gate_id, decided_at=utcnow() - timedelta(seconds=10)))
        fresh = link.submit(make_decision(gate_id))
        locked = threading.Event()

        def hold_the_write_lock() -> None:
            other = sqlite3.connect(engine.url.database, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            locked.set()
            time.sleep(1.5)  # longer than the fresh command lives
            other.execute("COMMIT")
            other.close()

        holder = threading.Thread(target=hold_the_write_lock)
        holder.start()
        assert locked.wait(5)
        link._cycle([])
        holder.join()
        link._cycle([])  # records the expiry the first cycle saw
        assert store.get_event(fresh.event_id).door_status is DoorStatus.EXPIRED
        wait_until(lambda: False, timeout=0.3)
        assert spy.on(f"{prefix}/{gate_id}/door/command") == []
    finally:
        link.client.stop()
        engine.dispose()


def test_a_door_command_goes_ahead_of_an_event_backlog(store, prefix, gate_id, spy):
    """After an outage hundreds of event messages wait in the outbox; a door command submitted while
    they drain must not queue behind them (in the outbox, in paho or on the wire)."""
    link = DoorLink(make_config(prefix, gate_id), store)
    backlog = 200
    padded = OutgoingMessage(OutboxKind.EVENT, link.topics.events, json.dumps({"pad": "x" * 3000}))
    link.outbox.enqueue([padded] * backlog, utcnow())
    link.client.start()  # no worker: this test runs the cycles
    try:
        assert link.client.wait_connected(5)
        link._cycle([])  # the first of the backlog is handed over
        link.submit(make_decision(gate_id))
        link._cycle([])
        command_topic, events_topic = f"{prefix}/{gate_id}/door/command", f"{prefix}/{gate_id}/events"
        assert spy.wait_for(command_topic)
        topics = [m.topic for m in spy.messages]
        ahead = topics[: topics.index(command_topic)].count(events_topic)
        assert ahead < backlog // 4, f"{ahead} of the {backlog} waiting event messages went first"
    finally:
        link.client.stop()


def test_a_database_outage_is_logged_once_with_its_reason_and_its_end(start, store, gate_id, caplog):
    """Without a spool the link's database is the central one: while it is down the worker retries
    every second and keeps the door outcomes it could not record, logging the outage once (the
    driver's reason, no traceback per retry) and its end."""
    link, _ = start(door=False, ack_timeout_s=0.5)
    event = link.submit(make_decision(gate_id))
    assert wait_until(lambda: link.outbox.counts().sent == 2)
    outage = Outage(store.engine)
    caplog.set_level(logging.INFO, logger="maskgate.gate.link")
    outage.begin()  # the no_ack falls due during the outage
    assert wait_until(lambda: outage.attempts >= 8, timeout=10), "the link did not retry"
    outage.end()
    assert door_status(store, event).door_status is DoorStatus.NO_ACK  # kept, recorded once back
    assert wait_until(lambda: any("database back" in r.getMessage() for r in caplog.records))
    records = [r for r in caplog.records if r.name == "maskgate.gate.link"]
    assert [r.getMessage() for r in records if r.exc_info] == []
    down = [r.getMessage() for r in records if "unavailable" in r.getMessage()]
    assert len(down) == 1 and "test outage" in down[0], down
    assert sum("database back" in r.getMessage() for r in records) == 1
