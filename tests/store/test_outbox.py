"""The outbox on SQLite and on the real PostgreSQL (the `store` fixture runs each test on both)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from maskgate.core import DoorStatus, Label, utcnow
from maskgate.store import Outbox, OutboxKind, OutgoingMessage


@pytest.fixture
def outbox(store) -> Outbox:
    return Outbox(store.engine)


def messages(event, expires_in: float = 3.0) -> list[OutgoingMessage]:
    now = utcnow()
    return [
        OutgoingMessage(
            OutboxKind.DOOR_COMMAND,
            "mg/gate-1/door/command",
            f'{{"id":"{event.event_id}"}}',
            expires_at=now + timedelta(seconds=expires_in),
        ),
        OutgoingMessage(OutboxKind.EVENT, "mg/gate-1/events", f'{{"event_id":"{event.event_id}"}}'),
    ]


def test_event_and_messages_are_stored_together(store, outbox, make_event):
    event = make_event()
    assert outbox.record_event(event, messages(event), now=utcnow()) is True
    assert store.get_event(event.event_id) == event
    stored = outbox.for_event(event.event_id)
    assert [m.kind for m in stored] == [OutboxKind.DOOR_COMMAND, OutboxKind.EVENT]
    assert all(m.attempts == 0 and m.sent_at is None and m.expired_at is None for m in stored)
    assert stored[0].expires_at is not None and stored[1].expires_at is None


def test_a_resubmitted_event_enqueues_nothing_twice(store, outbox, make_event):
    event = make_event()
    assert outbox.record_event(event, messages(event), now=utcnow()) is True
    assert outbox.record_event(event, messages(event), now=utcnow()) is False
    assert len(outbox.for_event(event.event_id)) == 2
    assert len(store.list_events().events) == 1


def test_one_transaction_a_failing_message_stores_no_event(store, outbox, make_event):
    event = make_event()
    broken = OutgoingMessage(OutboxKind.EVENT, "mg/gate-1/events", None)  # payload is NOT NULL
    with pytest.raises(IntegrityError):
        outbox.record_event(event, [*messages(event), broken], now=utcnow())
    assert store.get_event(event.event_id) is None
    assert outbox.counts().pending == 0


def test_pending_puts_door_commands_first_then_oldest_first(outbox, make_event):
    first, second = make_event(), make_event()
    outbox.record_event(first, messages(first), now=utcnow())
    outbox.record_event(second, messages(second), now=utcnow())
    pending = outbox.pending()
    kinds = [(m.kind, m.event_id) for m in pending]
    assert kinds == [
        (OutboxKind.DOOR_COMMAND, first.event_id),
        (OutboxKind.DOOR_COMMAND, second.event_id),
        (OutboxKind.EVENT, first.event_id),
        (OutboxKind.EVENT, second.event_id),
    ]
    assert len(outbox.pending(limit=1)) == 1


def test_mark_sent_and_failed(outbox, make_event):
    event = make_event()
    outbox.record_event(event, messages(event), now=utcnow())
    command, event_message = outbox.pending()
    outbox.mark_failed(command.id, "connection lost before the broker acknowledged it", may_have_arrived=True)
    outbox.mark_sent([event_message.id], utcnow())
    command, event_message = outbox.get(command.id), outbox.get(event_message.id)
    assert command.attempts == 1 and command.sent_at is None and "connection lost" in command.last_error
    assert event_message.attempts == 1 and event_message.sent_at is not None
    assert [m.id for m in outbox.pending()] == [command.id]
    assert outbox.counts().pending == 1 and outbox.counts().sent == 1


def test_an_expired_door_command_becomes_an_expired_incident(store, outbox, make_event):
    event = make_event(Label.WITH_MASK)  # an allow: not an incident until its door command fails
    outbox.record_event(event, messages(event, expires_in=0.5), now=utcnow())
    assert outbox.expire_due(utcnow()) == []
    later = utcnow() + timedelta(seconds=1)
    expired = outbox.expire_due(later)
    assert [e.event_id for e in expired] == [event.event_id]
    stored = store.get_event(event.event_id)
    assert stored.door_status is DoorStatus.EXPIRED and stored.is_incident
    assert store.list_incidents().events[0].event_id == event.event_id
    pending = outbox.pending()
    assert [m.kind for m in pending] == [OutboxKind.EVENT]  # the event message still goes out
    assert outbox.counts().expired == 1


def test_a_door_command_that_may_have_reached_the_door_expires_as_no_ack_not_expired(
    store, outbox, make_event
):
    """Published, then the connection died before the PUBACK: the door may have opened. Its answer is
    unknown (no_ack), never "expired" (never sent, door shut). A refused publish reached nobody."""
    lost, refused, lost_then_refused = make_event(), make_event(), make_event()
    for event in (lost, refused, lost_then_refused):
        outbox.record_event(event, messages(event, expires_in=0.1), now=utcnow())
    command = {e.event_id: outbox.for_event(e.event_id)[0].id for e in (lost, refused, lost_then_refused)}
    cut_off = "connection lost before the broker acknowledged it"
    outbox.mark_failed(command[lost.event_id], cut_off, may_have_arrived=True)
    outbox.mark_failed(command[refused.event_id], "not connected to the broker", may_have_arrived=False)
    outbox.mark_failed(command[lost_then_refused.event_id], cut_off, may_have_arrived=True)
    outbox.mark_failed(
        command[lost_then_refused.event_id], "broker refused: Not authorized", may_have_arrived=False
    )
    assert outbox.get(command[refused.event_id]).attempts == 0  # a refusal is not an attempt
    assert outbox.get(command[lost_then_refused.event_id]).attempts == 1
    expired = {e.event_id: e for e in outbox.expire_due(utcnow() + timedelta(seconds=1))}
    assert set(expired) == set(command)
    for event in (lost, lost_then_refused):
        assert expired[event.event_id].door_status is DoorStatus.NO_ACK
        stored = store.get_event(event.event_id)
        assert stored.door_status is DoorStatus.NO_ACK and stored.is_incident
    assert store.get_event(refused.event_id).door_status is DoorStatus.EXPIRED
    assert outbox.counts().expired == 3 and [m.kind for m in outbox.pending()] == [OutboxKind.EVENT] * 3


def test_expiry_spares_messages_in_flight_and_acked_events(store, outbox, make_event):
    in_flight, acked = make_event(), make_event()
    outbox.record_event(in_flight, messages(in_flight, expires_in=0.1), now=utcnow())
    outbox.record_event(acked, messages(acked, expires_in=0.1), now=utcnow())
    store.set_door_status(acked.event_id, DoorStatus.OPENED, utcnow(), 1.0)
    flying = outbox.for_event(in_flight.event_id)[0].id
    expired = outbox.expire_due(utcnow() + timedelta(seconds=1), exclude=[flying])
    assert expired == []  # the acked one keeps its real status
    assert store.get_event(acked.event_id).door_status is DoorStatus.OPENED
    assert outbox.get(flying).expired_at is None


def test_sent_commands_never_expire(outbox, make_event):
    event = make_event()
    outbox.record_event(event, messages(event, expires_in=0.1), now=utcnow())
    command = outbox.pending()[0]
    outbox.mark_sent([command.id], utcnow())
    assert outbox.expire_due(utcnow() + timedelta(seconds=5)) == []


def test_unacknowledged_commands_of_an_earlier_run(store, outbox, make_event):
    """Every sent, unanswered command with its sent_at, however recent: a restart can come 1 s after it."""
    silent, recent, answered, unsent = make_event(), make_event(), make_event(), make_event()
    an_hour_ago, now = utcnow() - timedelta(hours=1), utcnow()
    for event, sent_at in ((silent, an_hour_ago), (recent, now), (answered, now), (unsent, None)):
        outbox.record_event(event, messages(event), now=utcnow())
        if sent_at is not None:
            outbox.mark_sent([outbox.for_event(event.event_id)[0].id], sent_at)
    store.set_door_status(answered.event_id, DoorStatus.OPENED, utcnow(), 0.5)
    assert outbox.unacknowledged_commands() == [(silent.event_id, an_hour_ago), (recent.event_id, now)]


def test_purge_deletes_done_rows_only(outbox, make_event):
    event = make_event()
    outbox.record_event(event, messages(event), now=utcnow())
    command, event_message = outbox.pending()
    outbox.mark_sent([event_message.id], utcnow() - timedelta(days=2))
    assert outbox.purge(utcnow() - timedelta(days=1)) == 1
    assert [m.id for m in outbox.for_event(event.event_id)] == [command.id]


def test_messages_without_an_event(outbox):
    outbox.enqueue([OutgoingMessage(OutboxKind.EVENT, "mg/x", "{}")], now=utcnow())
    (message,) = outbox.pending()
    assert message.event_id is None and message.payload == "{}"


def test_deleting_an_event_deletes_its_messages(store, outbox, make_event):
    old = make_event(occurred_at=utcnow() - timedelta(days=400))
    outbox.record_event(old, messages(old), now=utcnow())
    assert store.purge(events_days=90, incidents_days=365).events == 1
    assert outbox.for_event(old.event_id) == []


def test_gates_sharing_a_database_see_only_their_own_rows(store, make_event):
    """Two door links on one database: neither publishes, expires nor counts the other's messages."""
    north, south = Outbox(store.engine, "north"), Outbox(store.engine, "south")
    for outbox in (north, south):
        event = make_event(gate_id=outbox.gate_id)
        assert outbox.record_event(event, messages(event, expires_in=-1.0), now=utcnow())
    assert {m.event_id for m in north.pending()} == {
        e.event_id for e in store.list_events().events if e.gate_id == "north"
    }
    assert north.counts().pending == south.counts().pending == 2
    assert Outbox(store.engine).counts().pending == 4  # unscoped: every gate (tools, tests)
    expired = north.expire_due(utcnow())
    assert [e.gate_id for e in expired] == ["north"]
    assert south.counts().pending == 2 and south.counts().expired == 0
    with pytest.raises(ValueError, match="south"):
        north.record_event(make_event(gate_id="south"), [], now=utcnow())
