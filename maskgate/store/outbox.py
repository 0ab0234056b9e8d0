"""The outbox: MQTT messages stored with their event, published later, retried until sent or expired.

DESIGN ("MQTT contract"): the agent writes the event to SQL first, then publishes. The event
row and its messages are inserted in **one transaction** (:meth:`Outbox.record_event`), so
a crash can lose neither the event nor the news of it. A publisher drains the pending rows
(door commands first, then in insertion order), marks them sent once the broker
acknowledged them, and expires door commands whose ``expires_at`` passed before they
could be sent: such an event gets ``DoorStatus.EXPIRED`` (an incident), never a late
opening. A command that may have reached the door all the same (a publish whose connection
died, or whose gate stopped, before the broker's PUBACK: ``attempts`` > 0) gets
``DoorStatus.NO_ACK`` instead: the door's answer is unknown, not "stayed shut". Event
messages carry no expiry and wait as long as it takes (at least once).

Each row belongs to a gate, and an outbox opened for a gate sees only that gate's rows, so gates
sharing one database never publish each other's messages. One publisher per gate: rows are not
locked against a second publisher.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, case, delete, func, insert, or_, select, true, update
from sqlalchemy.orm import Session

from maskgate.core import DoorStatus, Event
from maskgate.store.events import apply_door, event_values, gate_values, idempotent_inserts
from maskgate.store.schema import EventRow, OutboxRow


class OutboxKind(enum.StrEnum):
    """What an outbox row carries; door commands are published before anything else."""

    DOOR_COMMAND = "door_command"
    EVENT = "event"


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message to enqueue: the exact payload that will be published."""

    kind: OutboxKind
    topic: str
    payload: str
    qos: int = 1
    expires_at: datetime | None = None  # never published after this (door commands)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A stored outbox row."""

    id: int
    event_id: uuid.UUID | None
    kind: OutboxKind
    topic: str
    payload: str
    qos: int
    created_at: datetime
    expires_at: datetime | None
    attempts: int  # publishes that may have reached the broker (a refused one does not count)
    last_error: str | None
    sent_at: datetime | None
    expired_at: datetime | None

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True, slots=True)
class OutboxCounts:
    pending: int
    sent: int
    expired: int


_PENDING = OutboxRow.sent_at.is_(None) & OutboxRow.expired_at.is_(None)


class Outbox:
    """The repository over the ``outbox`` table. Thread-safe: each call uses its own transaction."""

    def __init__(self, engine: Engine, gate_id: str | None = None):
        """`gate_id`: the gate whose rows this outbox reads and writes (a door link's own);
        None sees every gate's rows (tools, tests)."""
        self.engine = engine
        self.gate_id = gate_id
        self._mine: ColumnElement[bool] = true() if gate_id is None else OutboxRow.gate_id == gate_id
        # The same statements as EventStore.record_event, so that an event recorded here is
        # exactly the event recorded there (idempotent on its uuid).
        self._insert_gate, self._insert_event = idempotent_inserts(engine)
        self._insert_message = insert(OutboxRow)

    def record_event(self, event: Event, messages: Sequence[OutgoingMessage], now: datetime) -> bool:
        """Store `event` and enqueue its `messages` in one transaction.

        Returns False (and enqueues nothing) when the event's uuid was already stored, so a
        retried submit neither duplicates the event nor sends its messages twice.
        """
        if self.gate_id is not None and event.gate_id != self.gate_id:
            raise ValueError(f"event of gate {event.gate_id!r} recorded in gate {self.gate_id!r}'s outbox")
        with self.engine.begin() as connection:
            connection.execute(self._insert_gate, gate_values(event.gate_id, None))
            if connection.execute(self._insert_event, event_values(event)).scalar() is None:
                return False
            rows = [_message_values(m, event.gate_id, event.event_id, now) for m in messages]
            if rows:
                connection.execute(self._insert_message, rows)
        return True

    def enqueue(self, messages: Sequence[OutgoingMessage], now: datetime) -> None:
        """Enqueue messages that belong to no event."""
        if messages:
            with self.engine.begin() as connection:
                rows = [_message_values(m, self.gate_id, None, now) for m in messages]
                connection.execute(self._insert_message, rows)

    def pending(self, limit: int = 100) -> list[OutboxMessage]:
        """Unsent, unexpired messages: door commands first (they are urgent), then oldest first."""
        urgent_first = case((OutboxRow.kind == OutboxKind.DOOR_COMMAND.value, 0), else_=1)
        query = (
            select(OutboxRow).where(self._mine, _PENDING).order_by(urgent_first, OutboxRow.id).limit(limit)
        )
        with self._session() as session:
            return [_message_from_row(row) for row in session.scalars(query)]

    def mark_sent(self, ids: Collection[int], at: datetime) -> None:
        """The broker acknowledged these messages."""
        if ids:
            statement = (
                update(OutboxRow)
                .where(OutboxRow.id.in_(list(ids)))
                .values(sent_at=at, attempts=OutboxRow.attempts + 1)
            )
            with self.engine.begin() as connection:
                connection.execute(statement)

    def mark_failed(self, message_id: int, error: str, *, may_have_arrived: bool) -> None:
        """A publish the broker did not acknowledge; the message stays pending.

        `may_have_arrived`: it was on the wire when its connection died (or the gate stopped)
        before the PUBACK, so the broker may have delivered it; it counts in ``attempts``,
        and a door command with attempts expires as ``no_ack``, not ``expired``. A refusal
        (not connected, not authorized) reached nobody: only its error is recorded.
        """
        values: dict[str, object] = {"last_error": error[:1000]}
        if may_have_arrived:
            values["attempts"] = OutboxRow.attempts + 1
        statement = update(OutboxRow).where(OutboxRow.id == message_id).values(**values)
        with self.engine.begin() as connection:
            connection.execute(statement)

    def expire_due(self, now: datetime, exclude: Collection[int] = ()) -> list[Event]:
        """Expire pending messages past their ``expires_at``; `exclude` are in flight right now.

        A door command that expires gives its event (unless an ack already set a status)
        ``DoorStatus.EXPIRED`` when it was never published (no attempt), and
        ``DoorStatus.NO_ACK`` when a publish may have reached the door (``attempts`` > 0): the
        door may have opened, and no ack says what it did. Returns those events, updated.
        """
        due = self._mine & _PENDING & OutboxRow.expires_at.is_not(None) & (OutboxRow.expires_at <= now)
        if exclude:
            due &= OutboxRow.id.not_in(list(exclude))
        with self._session() as session:
            # A read first: most calls find nothing, and a write transaction on SQLite would
            # take the database's write lock for nothing.
            ids = list(session.scalars(select(OutboxRow.id).where(due)))
        if not ids:
            return []
        expired_events: list[Event] = []
        with self._session() as session, session.begin():
            # The write first, RETURNING what it expired: the rows still pending now, in this
            # transaction (a SQLite transaction that read first could not upgrade to a write once
            # another connection had written meanwhile).
            columns = (OutboxRow.id, OutboxRow.kind, OutboxRow.event_id, OutboxRow.attempts)
            expire = update(OutboxRow).where(OutboxRow.id.in_(ids), _PENDING).values(expired_at=now)
            rows = session.execute(expire.returning(*columns)).all()
            for row in rows:
                if row.kind == OutboxKind.DOOR_COMMAND.value and row.event_id is not None:
                    status = DoorStatus.NO_ACK if row.attempts > 0 else DoorStatus.EXPIRED
                    event = _set_door_status_if_unset(session, row.event_id, status, now)
                    if event is not None:
                        expired_events.append(event)
        return expired_events

    def unacknowledged_commands(self) -> list[tuple[uuid.UUID, datetime]]:
        """(event id, sent_at) of every door command sent whose event never got a door status.

        After a restart the acks a previous process waited for are gone: the new process waits
        for them again from ``sent_at`` (a restart can come within the ack timeout of a command).
        """
        query = (
            select(OutboxRow.event_id, OutboxRow.sent_at)
            .join(EventRow, EventRow.id == OutboxRow.event_id)
            .where(
                self._mine,
                OutboxRow.kind == OutboxKind.DOOR_COMMAND.value,
                OutboxRow.sent_at.is_not(None),
                EventRow.door_status.is_(None),
            )
            .order_by(OutboxRow.id)
        )
        with self._session() as session:
            return [(row.event_id, row.sent_at) for row in session.execute(query)]

    def counts(self) -> OutboxCounts:
        query = select(
            func.count().filter(_PENDING),
            func.count().filter(OutboxRow.sent_at.is_not(None)),
            func.count().filter(OutboxRow.expired_at.is_not(None)),
        ).where(self._mine)
        with self._session() as session:
            pending, sent, expired = session.execute(query).one()
        return OutboxCounts(int(pending), int(sent), int(expired))

    def purge(self, before: datetime) -> int:
        """Delete rows sent or expired before `before` (the event keeps the outcome). Returns the count."""
        done_before = or_(OutboxRow.sent_at < before, OutboxRow.expired_at < before)
        with self.engine.begin() as connection:
            return connection.execute(delete(OutboxRow).where(self._mine, done_before)).rowcount

    def get(self, message_id: int) -> OutboxMessage | None:
        with self._session() as session:
            row = session.get(OutboxRow, message_id)
            return _message_from_row(row) if row else None

    def for_event(self, event_id: uuid.UUID) -> list[OutboxMessage]:
        query = select(OutboxRow).where(OutboxRow.event_id == event_id).order_by(OutboxRow.id)
        with self._session() as session:
            return [_message_from_row(row) for row in session.scalars(query)]

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)


def _set_door_status_if_unset(
    session: Session, event_id: uuid.UUID, status: DoorStatus, at: datetime
) -> Event | None:
    row = session.get(EventRow, event_id)
    if row is None or row.door_status is not None:
        return None
    return apply_door(row, status, at, None, None)


def _message_values(
    message: OutgoingMessage, gate_id: str | None, event_id: uuid.UUID | None, now: datetime
) -> dict[str, object]:
    return {
        "gate_id": gate_id,
        "event_id": event_id,
        "kind": message.kind.value,
        "topic": message.topic,
        "payload": message.payload,
        "qos": message.qos,
        "created_at": now,
        "expires_at": message.expires_at,
        "attempts": 0,
    }


def _message_from_row(row: OutboxRow) -> OutboxMessage:
    return OutboxMessage(
        id=row.id,
        event_id=row.event_id,
        kind=OutboxKind(row.kind),
        topic=row.topic,
        payload=row.payload,
        qos=row.qos,
        created_at=row.created_at,
        expires_at=row.expires_at,
        attempts=row.attempts,
        last_error=row.last_error,
        sent_at=row.sent_at,
        expired_at=row.expired_at,
    )
