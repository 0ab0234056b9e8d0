"""The door link's bookkeeping without a broker: ack tracking, expiry while offline, a database hiccup."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy.exc import OperationalError

from maskgate.core import AckReason, DoorStatus, utcnow
from maskgate.gate.comms import DoorLink
from maskgate.gate.comms.acks import AckTracker
from maskgate.store import OutboxKind
from tests.gate.comms.brokers import free_port, make_config, make_decision


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


def test_counters_in_state(offline_link):
    from maskgate.core import Action

    for action in (Action.ALLOW, Action.ALLOW, Action.DENY):
        offline_link.submit(make_decision(action=action))
    state = offline_link.publish_state(camera_ok=True, fps=9.5, model_version="m")  # offline: kept
    assert (state.decisions, state.allowed, state.denied, state.warned) == (3, 2, 1, 0)
    assert state.outbox_pending == 6 and state.compliance == pytest.approx(2 / 3)
