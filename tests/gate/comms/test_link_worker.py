"""The door link's bookkeeping without a broker: ack tracking, expiry while offline, a database hiccup."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy.exc import OperationalError

from maskgate.core import AckReason, DoorStatus, Event, utcnow
from maskgate.gate.comms import DoorLink
from maskgate.gate.comms.acks import AckTracker
from maskgate.gate.comms.client import IncomingMessage, PublishState
from maskgate.gate.comms.payloads import DoorAck
from maskgate.store import OutboxKind
from tests.gate.comms.brokers import free_port, make_config, make_decision, wait_until


def test_ack_tracker_round_trip_duplicates_and_late_acks():
    tracker = AckTracker(timeout_s=1.0)
    first, second = uuid.uuid4(), uuid.uuid4()
    tracker.expect(first, published_at=100.0)
    tracker.expect(second, published_at=100.0)
    assert tracker.next_deadline() == 101.0
    outcome = tracker.resolve(first, DoorStatus.OPENED, received_at=100.0042)
    assert outcome.rtt_ms == pytest.approx(4.2) and not outcome.late
    assert tracker.resolve(first, DoorStatus.OPENED, received_at=100.01) is None  # duplicate
    assert tracker.overdue(now=100.5) == []
    assert tracker.overdue(now=101.0) == [second] and len(tracker) == 0
    late = tracker.resolve(second, DoorStatus.OPENED, received_at=103.0)
    assert late.late and late.rtt_ms == pytest.approx(3000)
    assert tracker.resolve(uuid.uuid4(), DoorStatus.OPENED, received_at=1.0) is None  # unknown


@pytest.fixture
def offline_link(store):
    """A link to a broker that is not there: the outbox must hold everything."""
    config = make_config("offline", url=f"mqtt://127.0.0.1:{free_port()}", door_command_ttl_s=0.2)
    return DoorLink(config, store)


def test_a_command_that_cannot_be_sent_expires_and_its_event_is_still_sent_later(offline_link, store):
    event = offline_link.submit(make_decision())
    time.sleep(0.25)
    offline_link._cycle([])
    stored = store.get_event(event.event_id)
    assert stored.door_status is DoorStatus.EXPIRED and stored.is_incident
    pending = offline_link.outbox.pending()
    assert [m.kind for m in pending] == [OutboxKind.EVENT]  # waits for the broker


def test_a_door_outcome_survives_a_database_hiccup(offline_link, store, monkeypatch):
    event = offline_link.submit(make_decision())
    real = store.set_door_status
    calls = []

    def down_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise OperationalError("UPDATE events", {}, Exception("database is locked"))
        return real(*args)

    monkeypatch.setattr(store, "set_door_status", down_once)
    offline_link._record_status(event.event_id, DoorStatus.OPENED, utcnow(), 3.5, AckReason.OPENED)
    assert store.get_event(event.event_id).door_status is None
    offline_link._retry_unrecorded()
    stored = store.get_event(event.event_id)
    assert stored.door_status is DoorStatus.OPENED and stored.door_rtt_ms == 3.5
    assert stored.door_reason is AckReason.OPENED  # the reason survives the retry
    assert offline_link._unrecorded == []


def test_counters_in_state(offline_link, monkeypatch):
    from maskgate.core import Action

    for action in (Action.ALLOW, Action.ALLOW, Action.DENY):
        offline_link.submit(make_decision(action=action))

    def hung(*_args):  # the agent loop's heartbeat publishes the state: it must not wait on the database
        raise AssertionError("publish_state read the database")

    monkeypatch.setattr(offline_link.outbox, "counts", hung)
    state = offline_link.publish_state(camera_ok=True, fps=9.5, model_version="m")  # offline: kept
    assert (state.decisions, state.allowed, state.denied, state.warned) == (3, 2, 1, 0)
    assert state.outbox_pending == 6 and state.compliance == pytest.approx(2 / 3)
    monkeypatch.undo()
    offline_link._count_pending()  # the worker's recount agrees
    assert offline_link.publish_state(camera_ok=True, fps=9.5, model_version="m").outbox_pending == 6


# -- a fake MQTT client: the broker's answers (PUBACK, lost connection, acks) at the test's command ----


class FakePublication:
    def __init__(self, topic: str, payload: bytes | str, state: PublishState):
        self.topic, self.payload, self.state, self.error = topic, payload, state, ""

    def lose(self) -> None:
        self.state, self.error = PublishState.LOST, "connection lost before the broker acknowledged it"


class FakeClient:
    """Stands in for MqttClient: what the link publishes, and what the broker makes of it."""

    def __init__(self, *, connected: bool = True, puback: bool = False):
        self.connected, self.puback = connected, puback
        self.published: list[FakePublication] = []
        self.final: list[tuple[str, str, bool]] | None = None
        self.on_stop = lambda: None

    def publish(self, topic, payload, *, qos=1, retain=False, properties=None) -> FakePublication:
        state = PublishState.SENT if self.puback else PublishState.PENDING
        self.published.append(publication := FakePublication(topic, payload, state))
        return publication

    def commands(self) -> list[FakePublication]:
        return [p for p in self.published if p.topic.endswith("/door/command")]

    def start(self) -> None:
        pass

    def stop(self, final=(), timeout: float = 2.0) -> None:
        self.on_stop()  # while it disconnects: the last acks arrive, the database comes back...
        self.final, self.connected = list(final), False


def fake_link(store, **mqtt) -> tuple[DoorLink, FakeClient]:
    connected = mqtt.pop("connected", True)
    puback = mqtt.pop("puback", False)
    link = DoorLink(make_config("fake", url=f"mqtt://127.0.0.1:{free_port()}", **mqtt), store)
    link.client = client = FakeClient(connected=connected, puback=puback)
    return link, client


def door_ack(link: DoorLink, event: Event) -> IncomingMessage:
    ack = DoorAck(event.event_id, link.gate_id, DoorStatus.OPENED, utcnow(), AckReason.OPENED)
    return IncomingMessage(link.topics.door_ack, ack.encode(), received_at=time.monotonic())


def test_a_command_cut_off_before_its_puback_expires_as_no_ack_and_a_late_ack_still_counts(store, caplog):
    """The door command is on the wire (the door may open), the connection dies before the PUBACK and
    the gate is offline past the command's life: its answer is unknown (no_ack), not "never sent"."""
    link, client = fake_link(store, door_command_ttl_s=0.2)
    event = link.submit(make_decision())
    link._cycle([])
    assert len(client.commands()) == 1
    for publication in client.published:
        publication.lose()
    client.connected = False
    link._cycle([])  # the publish is settled as lost: the row is pending again
    time.sleep(0.25)
    link._cycle([])  # the expiry sweep
    stored = store.get_event(event.event_id)
    assert stored.door_status is DoorStatus.NO_ACK and stored.is_incident
    assert "expired before it could be sent" not in caplog.text
    assert "may have reached the door" in caplog.text
    row = link.outbox.for_event(event.event_id)[0]
    assert row.expired_at is not None and row.sent_at is None and row.attempts == 1
    # The controller's own client re-sends its ack once it is back: the truth about the door wins.
    link._on_ack_message(door_ack(link, event))
    link._cycle(link._drain_inbox())
    assert store.get_event(event.event_id).door_status is DoorStatus.OPENED


def test_a_command_the_broker_has_not_acknowledged_at_stop_is_no_ack_after_a_restart(store):
    """stop() gives up on a publish still waiting for its PUBACK: the next run must not call it
    "expired before it could be sent"."""
    link, client = fake_link(store, door_command_ttl_s=0.3)
    link.start()
    event = link.submit(make_decision())
    assert wait_until(lambda: client.commands())  # on the wire; no PUBACK ever comes
    link.stop(drain_s=0.05)
    assert client.final == [(link.topics.availability, "stopped", True)]
    row = link.outbox.for_event(event.event_id)[0]
    assert row.sent_at is None and row.attempts == 1 and "stopped" in row.last_error
    time.sleep(0.35)
    restarted, _ = fake_link(store, door_command_ttl_s=0.3, connected=False)  # the broker is not back yet
    restarted._cycle([])
    stored = store.get_event(event.event_id)
    assert stored.door_status is DoorStatus.NO_ACK and stored.is_incident


def test_a_refused_publish_still_expires_as_never_sent(store):
    """A refusal (here: the connection was gone) reached nobody: that command is "expired"."""
    link, client = fake_link(store, door_command_ttl_s=0.2)
    event = link.submit(make_decision())
    link._cycle([])
    for publication in client.published:
        publication.state, publication.error = PublishState.FAILED, "not connected to the broker"
    client.connected = False
    link._cycle([])
    time.sleep(0.25)
    link._cycle([])
    assert store.get_event(event.event_id).door_status is DoorStatus.EXPIRED
    assert link.outbox.for_event(event.event_id)[0].attempts == 0


def test_door_outcomes_waiting_in_memory_are_recorded_on_stop(store, monkeypatch):
    """An ack came while the database was down, another one while the client disconnects; the
    database is back by then: stop() records both instead of losing them (the next run would have
    turned them into no_ack incidents for doors that opened)."""
    link, client = fake_link(store, ack_timeout_s=30.0, puback=True)
    real, down = store.set_door_status, [True]

    def flaky(*args):
        if down[0]:
            raise OperationalError("UPDATE events", {}, Exception("server closed the connection"))
        return real(*args)

    monkeypatch.setattr(store, "set_door_status", flaky)
    link.start()
    first, second = link.submit(make_decision()), link.submit(make_decision())
    assert wait_until(lambda: len(client.commands()) == 2 and link.outbox.counts().sent == 4)
    link._on_ack_message(door_ack(link, first))
    assert wait_until(lambda: link._unrecorded)  # the database did not take it

    def disconnecting() -> None:
        down[0] = False
        link._on_ack_message(door_ack(link, second))

    client.on_stop = disconnecting
    link.stop(drain_s=0.05)
    for event in (first, second):
        stored = store.get_event(event.event_id)
        assert stored.door_status is DoorStatus.OPENED and stored.door_reason is AckReason.OPENED
    assert link._unrecorded == []


def test_a_worker_stuck_in_the_database_does_not_hold_up_the_stop(store, monkeypatch):
    """A database call that hangs (a lock, a dead connection) keeps the worker; the stop goes on
    without it after join_s and still publishes "stopped", so systemd's deadline is kept."""
    import threading

    link, client = fake_link(store)
    release, entered = threading.Event(), threading.Event()

    def hung(*_args, **_kwargs):
        entered.set()
        release.wait(30)
        return []

    link.start()
    monkeypatch.setattr(link.outbox, "expire_due", hung)
    link._wake()
    assert entered.wait(10), "the worker never reached the database"
    started = time.monotonic()
    link.stop(drain_s=0.0, join_s=0.5)
    assert time.monotonic() - started < 10  # not the 30 s the worker is held for
    assert client.final is not None and client.final[0][1] == "stopped"
    release.set()
