"""The gate's local spool: events wait in a local SQLite database until the central one takes them.

The door must never depend on the central database (issue #10). With ``paths.spool`` set, the
agent records every event, its outbox messages and its door outcome in a local SQLite file
(the same Alembic schema) and a :class:`SpoolForwarder` copies them to the central database
from a background thread:

* events in the order they happened (``occurred_at``, then id), a batch per transaction,
  with the central store's idempotent insert (``ON CONFLICT DO NOTHING`` on the uuid), so a
  replay after a crash between the central commit and the local mark stores nothing twice;
* door outcomes, also when the ack arrives after the event was forwarded, and again when a
  late ack replaces ``no_ack``;
* the gate itself (``ensure_gate``) on every (re)connection.

What was forwarded is kept in ``spool_forwarded``, a table of the spool only: it has its own
``MetaData`` and never appears in the central schema or its migrations. A central outage is
logged once when it starts and once when it ends; retries back off from 0.5 s to 5 s.
Forwarded and settled events are deleted from the spool after :data:`SPOOL_KEEP` (the
central database applies ``[retention]``; the spool only has to bridge outages).

An event the central database refuses (a value too long for its column, a constraint: not an
outage) must not hold back the events after it: its batch is sent again one event at a time and
the refused one is quarantined, i.e. noted in ``spool_quarantine`` (another spool-only table),
logged once at ERROR, kept in the spool and neither sent again nor purged.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Column, Engine, MetaData, String, Table, Uuid, delete, exists, func, select, update
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from maskgate.core import AckReason, DoorStatus, Event, utcnow
from maskgate.store import migrate
from maskgate.store.db import DatabaseUnavailable, StoreError, error_reason
from maskgate.store.events import EventStore, event_from_row, insert_for_dialect, known_reason
from maskgate.store.schema import EventRow, OutboxRow, UTCDateTime

log = logging.getLogger("maskgate.store.spool")

BATCH_SIZE = 200  # events per central transaction while catching up
POLL_S = 1.0  # the spool is read at least this often even when nobody called wake()
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 5.0  # so the spool drains within about 5 s of the central database's return
SPOOL_KEEP = timedelta(days=1)  # forwarded, settled events stay this long in the spool
PURGE_EVERY_S = 3600.0

SPOOL_METADATA = MetaData()
spool_forwarded = Table(
    "spool_forwarded",
    SPOOL_METADATA,
    Column("event_id", Uuid, primary_key=True),
    # The door status the central database has from us (NULL: none yet, or not known to be there).
    Column("door_status", String(16)),
    Column("forwarded_at", UTCDateTime, nullable=False),
)
# Events the central database refused: kept, not sent again; deleting a row here sends it again.
spool_quarantine = Table(
    "spool_quarantine",
    SPOOL_METADATA,
    Column("event_id", Uuid, primary_key=True),
    Column("reason", String, nullable=False),
    Column("quarantined_at", UTCDateTime, nullable=False),
)

_QUARANTINED = exists().where(spool_quarantine.c.event_id == EventRow.id)
_NOT_FORWARDED = spool_forwarded.c.event_id.is_(None) & ~_QUARANTINED
_STATUS_BEHIND = EventRow.door_status.is_not(None) & spool_forwarded.c.door_status.is_distinct_from(
    EventRow.door_status
)


class CentralUnavailable(StoreError):
    """The central database did not answer or has the wrong schema; the spool keeps everything."""


class CentralRefused(StoreError):
    """The central database refused the data (a value too long, a constraint): not an outage."""


@dataclass(frozen=True, slots=True)
class Outage:
    """One stretch without the central database, as the forwarder saw it."""

    started_at: datetime
    ended_at: datetime | None = None
    duration_s: float | None = None  # first failed attempt to the first successful reconnection
    drained_after_s: float | None = None  # reconnection to an empty spool (None: not yet)
    reason: str = ""


def prepare_spool(engine: Engine) -> None:
    """Bring the spool to this maskgate's schema: the central migrations plus the spool's own table."""
    migrate.upgrade(engine)
    SPOOL_METADATA.create_all(engine)


class SpoolForwarder:
    """Copies a gate's spooled events and door outcomes to the central database, in order, once each.

    Thread-safe for its readers (``pending``, ``quarantined``, ``connected``, ``last_outage``); one
    forwarder per spool. ``forward_once`` is the unit of work and may be driven directly (tests).
    """

    def __init__(
        self,
        local: Engine,
        central: EventStore,
        gate_id: str,
        *,
        batch_size: int = BATCH_SIZE,
        poll_s: float = POLL_S,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        keep: timedelta = SPOOL_KEEP,
    ):
        if batch_size < 1 or poll_s <= 0 or not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("batch_size >= 1, poll_s > 0 and 0 < backoff_initial_s <= backoff_max_s")
        self.local = local
        self.central = central
        self.gate_id = gate_id
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.keep = keep
        insert = insert_for_dialect(local.dialect.name)
        self._insert_forwarded = insert(spool_forwarded).on_conflict_do_nothing()
        self._insert_quarantined = insert(spool_quarantine).on_conflict_do_nothing()
        self._connected = False
        self._outage: Outage | None = None  # the current one while disconnected
        self._down_since = 0.0  # time.monotonic() of the current outage's start
        self._back_at: float | None = None  # time.monotonic() of the last reconnection, until drained
        self.last_outage: Outage | None = None  # the latest one that ended
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_purge = float("-inf")  # the first pass purges: agents may restart more often than hourly

    # -- the agent's interface -----------------------------------------------------------------

    def start(self) -> SpoolForwarder:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"spool-{self.gate_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain_s: float = 2.0, timeout: float | None = None) -> bool:
        """Give the central database up to `drain_s` to take what is pending, then stop; wait at most
        `timeout` s (None: no limit) for the thread to end. Returns whether it ended.

        What is still pending stays in the spool for the next start. A thread that does not end in
        time (blocked on a hung central database) is a daemon, left behind so that it cannot hold up
        the agent's exit; whatever it was sending is sent again on the next start.
        """
        thread = self._thread
        if thread is None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._connected:
            self.wait_drained(drain_s if deadline is None else min(drain_s, timeout))
        self._stopping.set()
        self._wakeup.set()
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("gate %s: spool forwarder did not end in time; left behind", self.gate_id)
            return False
        self._thread = None
        return True

    def wake(self) -> None:
        """Something new is in the spool (an event, a door outcome): forward it now, not at the next poll."""
        self._wakeup.set()

    @property
    def connected(self) -> bool:
        """Whether the last attempt to reach the central database succeeded."""
        return self._connected

    @property
    def outage(self) -> Outage | None:
        """The outage going on now, if any."""
        return self._outage

    def pending(self) -> int:
        """Events in the spool that the central database does not have yet (quarantined ones aside)."""
        return self._count(_NOT_FORWARDED)

    def quarantined(self) -> int:
        """Events the central database refused: kept in the spool, not sent again (``spool_quarantine``)."""
        return self._count(_QUARANTINED)

    def pending_door_statuses(self) -> int:
        """Door outcomes of forwarded events that the central database does not have yet."""
        return self._count(spool_forwarded.c.event_id.is_not(None) & _STATUS_BEHIND)

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the central database has every spooled event and door outcome."""
        deadline = time.monotonic() + timeout
        while True:
            if self._drained():
                return True
            if time.monotonic() >= deadline:
                return False
            self._wakeup.set()
            time.sleep(0.02)

    # -- one pass ----------------------------------------------------------------------------

    def forward_once(self) -> bool:
        """Forward one batch of events and one of door outcomes; True if more may be waiting.

        Raises :class:`CentralUnavailable` when the central database fails (nothing is lost:
        whatever was not marked forwarded is sent again, and the central insert is idempotent).
        """
        if not self._connected:
            self._connect()
        more = self._forward_events()
        more |= self._forward_door_statuses()
        if not more and self._back_at is not None and self._drained():
            self._note_drained()
        if time.monotonic() - self._last_purge >= PURGE_EVERY_S:
            self._last_purge = time.monotonic()
            self.purge()
        return more

    def purge(self, now: datetime | None = None) -> int:
        """Delete events forwarded and settled more than ``keep`` ago whose messages are all sent.

        Settled: the central database has the event's latest door outcome. An event whose
        MQTT message still waits in the outbox stays (deleting it would drop the message).
        Returns how many events were deleted.
        """
        cutoff = (now or utcnow()) - self.keep
        unsent = exists().where(
            OutboxRow.event_id == EventRow.id, OutboxRow.sent_at.is_(None), OutboxRow.expired_at.is_(None)
        )
        purgeable = (
            select(EventRow.id)
            .join(spool_forwarded, spool_forwarded.c.event_id == EventRow.id)
            .where(
                EventRow.occurred_at < cutoff,
                spool_forwarded.c.door_status.is_not_distinct_from(EventRow.door_status),
                ~unsent,
            )
        )
        orphaned = ~exists().where(EventRow.id == spool_forwarded.c.event_id)
        with self.local.begin() as connection:
            connection.execute(delete(OutboxRow).where(OutboxRow.event_id.in_(purgeable)))
            deleted = connection.execute(delete(EventRow).where(EventRow.id.in_(purgeable))).rowcount
            connection.execute(delete(spool_forwarded).where(orphaned))
        if deleted:
            log.info("gate %s: purged %d forwarded events from the spool", self.gate_id, deleted)
        return deleted

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        delay = self.backoff_initial_s
        while not self._stopping.is_set():
            self._wakeup.clear()
            try:
                more = self.forward_once()
            except CentralUnavailable as exc:
                self._went_down(str(exc))
            except Exception:  # the spool itself failed (disk?): say so every time, keep trying
                log.exception("gate %s: spool forwarding failed", self.gate_id)
            else:
                delay = self.backoff_initial_s
                if not more:
                    self._wakeup.wait(self.poll_s)
                continue
            # Backing off: wake() must not cut this short, or every decision would retry at once.
            self._stopping.wait(delay)
            delay = min(delay * 2, self.backoff_max_s)

    # -- forwarding ----------------------------------------------------------------------------

    def _connect(self) -> None:
        with self._central():
            migrate.require_head(self.central.engine)
            self.central.ensure_gate(self.gate_id)
        self._came_back()

    def _forward_events(self) -> bool:
        """Forward the oldest batch of events; True if a full batch went (more may wait)."""
        query = (
            select(EventRow)
            .outerjoin(spool_forwarded, spool_forwarded.c.event_id == EventRow.id)
            .where(_NOT_FORWARDED)
            .order_by(EventRow.occurred_at, EventRow.id)
            .limit(self.batch_size)
        )
        with Session(self.local) as session:
            events = [event_from_row(row) for row in session.scalars(query)]
        if not events:
            return False
        try:
            with self._central():
                inserted = self.central.record_events(events)
        except CentralRefused:  # one event's data: find it, so that it does not hold back the rest
            for event in events:
                self._forward_alone(event)
        else:
            self._mark_forwarded(events, inserted)
        return len(events) == self.batch_size

    def _forward_alone(self, event: Event) -> None:
        """Send one event in its own transaction; quarantine it if the central database refuses it."""
        try:
            with self._central():
                inserted = self.central.record_events([event])
        except CentralRefused as exc:
            self._quarantine(event, str(exc))
        else:
            self._mark_forwarded([event], inserted)

    def _quarantine(self, event: Event, reason: str) -> None:
        row = {"event_id": event.event_id, "reason": reason, "quarantined_at": utcnow()}
        with self.local.begin() as connection:
            connection.execute(self._insert_quarantined, row)
        log.error(
            "gate %s: central database refused event %s (%s); it stays in the spool, quarantined and not "
            "sent again (%d quarantined; table spool_quarantine, docs/operations.md)",
            self.gate_id,
            event.event_id,
            reason,
            self.quarantined(),
        )

    def _mark_forwarded(self, events: list[Event], inserted: set[uuid.UUID]) -> None:
        """Remember what the central database now has.

        An event that was already there (a replay after a crash) is marked without a door
        status, so that the next pass sends its outcome rather than trusting an older copy.
        """
        now = utcnow()
        rows = [
            {
                "event_id": event.event_id,
                "door_status": _status_value(event) if event.event_id in inserted else None,
                "forwarded_at": now,
            }
            for event in events
        ]
        with self.local.begin() as connection:
            connection.execute(self._insert_forwarded, rows)

    def _forward_door_statuses(self) -> bool:
        """Forward door outcomes the central database lacks; True if more work may wait."""
        query = (
            select(
                EventRow.id,
                EventRow.door_status,
                EventRow.door_at,
                EventRow.door_rtt_ms,
                EventRow.door_reason,
            )
            .join(spool_forwarded, spool_forwarded.c.event_id == EventRow.id)
            .where(_STATUS_BEHIND)
            .order_by(EventRow.occurred_at, EventRow.id)
            .limit(self.batch_size)
        )
        with self.local.connect() as connection:
            rows = connection.execute(query).all()
        resend = [
            self._forward_door_status(
                r.id, r.door_status, r.door_at, r.door_rtt_ms, known_reason(r.door_reason)
            )
            for r in rows
        ]
        return len(rows) == self.batch_size or any(resend)

    def _forward_door_status(
        self, event_id: uuid.UUID, status: str, at: datetime, rtt_ms: float | None, reason: AckReason | None
    ) -> bool:
        """Send one door outcome; True if the event itself must be sent again."""
        with self._central():
            try:
                self.central.set_door_status(event_id, DoorStatus(status), at, rtt_ms, reason)
            except StoreError:  # raised for a missing event only: the central copy was lost (a restore?)
                log.warning(
                    "gate %s: central database has no event %s; forwarding it again", self.gate_id, event_id
                )
                self._set_forwarded(event_id, None, unmark=True)
                return True
        self._set_forwarded(event_id, status)
        return False

    def _set_forwarded(self, event_id: uuid.UUID, door_status: str | None, unmark: bool = False) -> None:
        """Record the door status the central database now has; `unmark`: it has not the event at all."""
        where = spool_forwarded.c.event_id == event_id
        if unmark:
            statement = delete(spool_forwarded).where(where)
        else:
            statement = update(spool_forwarded).where(where).values(door_status=door_status)
        with self.local.begin() as connection:
            connection.execute(statement)

    @contextmanager
    def _central(self) -> Iterator[None]:
        """Turn the central database's failures into :class:`CentralUnavailable`, refused data into
        :class:`CentralRefused` (the database answered: no outage)."""
        try:
            yield
        except (DataError, IntegrityError) as exc:
            raise CentralRefused(error_reason(exc)) from exc
        except SQLAlchemyError as exc:
            raise CentralUnavailable(error_reason(exc)) from exc
        except (DatabaseUnavailable, migrate.SchemaError) as exc:
            raise CentralUnavailable(str(exc)) from exc

    # -- outage bookkeeping --------------------------------------------------------------------

    def _went_down(self, reason: str) -> None:
        self._connected = False
        self._back_at = None
        if self._outage is None:
            self._down_since = time.monotonic()
            self._outage = Outage(started_at=utcnow(), reason=reason)
            log.warning(
                "gate %s: central database unavailable (%s); events wait in the spool (%d pending)",
                self.gate_id,
                reason,
                self._safe_pending(),
            )

    def _came_back(self) -> None:
        self._connected = True
        if self._outage is None:
            return
        duration = time.monotonic() - self._down_since
        self.last_outage = replace(self._outage, ended_at=utcnow(), duration_s=duration)
        self._outage = None
        self._back_at = time.monotonic()
        log.warning(
            "gate %s: central database back after %.1f s; forwarding %d spooled events",
            self.gate_id,
            duration,
            self._safe_pending(),
        )

    def _note_drained(self) -> None:
        assert self._back_at is not None
        drained = time.monotonic() - self._back_at
        self._back_at = None
        if self.last_outage is not None:
            self.last_outage = replace(self.last_outage, drained_after_s=drained)
        log.info("gate %s: spool drained %.2f s after the central database came back", self.gate_id, drained)

    # -- helpers -------------------------------------------------------------------------------

    def _drained(self) -> bool:
        return self.pending() == 0 and self.pending_door_statuses() == 0

    def _count(self, condition) -> int:
        query = (
            select(func.count())
            .select_from(EventRow)
            .outerjoin(spool_forwarded, spool_forwarded.c.event_id == EventRow.id)
            .where(condition)
        )
        with self.local.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def _safe_pending(self) -> int:
        try:
            return self.pending()
        except SQLAlchemyError:
            return -1


def _status_value(event: Event) -> str | None:
    return event.door_status.value if event.door_status else None
