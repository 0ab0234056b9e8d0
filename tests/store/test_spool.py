"""The gate's local spool: events reach the central database in order, exactly once, door outcomes too.

The spool is a real SQLite file; the central database is real SQLite and real PostgreSQL
(`store` fixture). Outages are made by refusing the central engine's new connections (the
engine's own ``do_connect`` hook) or by pointing at a port where nothing listens; the fault
test in tests/faults/test_database_outage.py stops a real PostgreSQL instead.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, event, func, select, update

from maskgate.config import Config, PathsConfig
from maskgate.core import AckReason, DoorStatus, Event, utcnow
from maskgate.store import EventStore, Outbox, OutboxKind, OutgoingMessage, SchemaError, make_engine, migrate
from maskgate.store.schema import EventRow
from maskgate.store.spool import (
    CentralUnavailable,
    SpoolForwarder,
    prepare_spool,
    spool_forwarded,
    spool_quarantine,
)
from tests.conftest import EventFactory
from tests.gate.comms.brokers import free_port, wait_until


class ArrivalLog(EventStore):
    """The central store, noting the order in which events were newly stored."""

    def __init__(self, engine: Engine):
        super().__init__(engine)
        self.arrivals: list[uuid.UUID] = []

    def record_events(self, events) -> set[uuid.UUID]:
        inserted = super().record_events(events)
        self.arrivals += [e.event_id for e in events if e.event_id in inserted]
        return inserted


class Outage:
    """Makes the central engine refuse new connections, as a stopped server would."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.down = False
        self.attempts = 0
        event.listen(engine, "do_connect", self._connect)

    def _connect(self, dialect, _record, _cargs, _cparams) -> None:
        if self.down:
            self.attempts += 1
            raise dialect.loaded_dbapi.OperationalError("connection refused (test outage)")

    def begin(self) -> None:
        self.down = True
        self.engine.dispose()  # pooled connections would otherwise outlive the "outage"

    def end(self) -> None:
        self.down = False


@pytest.fixture
def spool(tmp_path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'spool' / 'gate.sqlite'}")
    prepare_spool(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def local(spool: Engine) -> EventStore:
    """The gate's own store: what DoorLink and StoreSink write to."""
    return EventStore(spool)


@pytest.fixture
def central(migrated_engine: Engine) -> ArrivalLog:
    return ArrivalLog(migrated_engine)


def drain(forwarder: SpoolForwarder) -> None:
    while forwarder.forward_once():
        pass


def spooled(
    local: EventStore, make_event: EventFactory, n: int, after: datetime | None = None
) -> list[Event]:
    """`n` events recorded in the spool; `after`: one a second from then on, as a running gate records
    them (otherwise each older than the last, which a forwarder running meanwhile would see out of order).
    """
    times = [None] * n if after is None else [after + timedelta(seconds=i + 1) for i in range(n)]
    events = [make_event(occurred_at=when) for when in times]
    for e in events:
        local.record_event(e)
    return events


def in_time_order(events: list[Event]) -> list[uuid.UUID]:
    return [e.event_id for e in sorted(events, key=lambda e: (e.occurred_at, e.event_id))]


def test_events_reach_the_central_database_in_order_once(local, central, spool, make_event):
    events = spooled(local, make_event, 5)  # make_event goes back in time: stored newest first
    forwarder = SpoolForwarder(spool, central, "gate-1", batch_size=2)
    assert forwarder.pending() == 5 and not forwarder.connected

    drain(forwarder)

    assert forwarder.connected and forwarder.pending() == 0
    assert central.arrivals == in_time_order(events)
    assert [central.get_event(e.event_id) for e in events] == events
    assert [g.gate_id for g in central.list_gates()] == ["gate-1"]
    assert forwarder.forward_once() is False and len(central.arrivals) == 5  # nothing sent twice


def test_a_replay_after_a_crash_between_central_insert_and_local_mark_stores_nothing_twice(
    local, central, spool, make_event, monkeypatch
):
    events = spooled(local, make_event, 3)
    crashing = SpoolForwarder(spool, central, "gate-1")
    monkeypatch.setattr(crashing, "_mark_forwarded", lambda *_: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError, match="crash"):
        crashing.forward_once()
    assert len(central.arrivals) == 3 and crashing.pending() == 3  # central has them; the spool does not know
    # The door answered while the agent was down; the restarted forwarder must still send it.
    local.set_door_status(events[0].event_id, DoorStatus.OPENED, utcnow(), 12.5)

    restarted = SpoolForwarder(spool, central, "gate-1")
    drain(restarted)

    assert restarted.pending() == 0 and restarted.pending_door_statuses() == 0
    assert len(central.arrivals) == 3  # the replay inserted nothing
    assert _central_count(central) == 3
    forwarded = central.get_event(events[0].event_id)
    assert forwarded.door_status is DoorStatus.OPENED and forwarded.door_rtt_ms == 12.5


def test_door_outcomes_are_forwarded_when_they_arrive_and_a_late_ack_replaces_no_ack(
    local, central, spool, make_event
):
    (spooled_event,) = spooled(local, make_event, 1)
    forwarder = SpoolForwarder(spool, central, "gate-1")
    drain(forwarder)
    assert central.get_event(spooled_event.event_id).door_status is None

    local.set_door_status(spooled_event.event_id, DoorStatus.NO_ACK, utcnow())
    assert forwarder.pending_door_statuses() == 1
    drain(forwarder)
    assert central.get_event(spooled_event.event_id).door_status is DoorStatus.NO_ACK
    assert central.get_event(spooled_event.event_id).is_incident

    local.set_door_status(
        spooled_event.event_id, DoorStatus.OPENED, utcnow(), 40.0, AckReason.OPENED
    )  # late ack
    drain(forwarder)
    late = central.get_event(spooled_event.event_id)
    assert late.door_status is DoorStatus.OPENED and not late.is_incident and late.door_rtt_ms == 40.0
    assert late.door_reason is AckReason.OPENED
    assert forwarder.pending_door_statuses() == 0 and len(central.arrivals) == 1


def test_an_event_with_its_door_outcome_is_forwarded_in_one_write(local, central, spool, make_event):
    (spooled_event,) = spooled(local, make_event, 1)
    local.set_door_status(spooled_event.event_id, DoorStatus.REFUSED, utcnow(), 3.0)
    forwarder = SpoolForwarder(spool, central, "gate-1")
    forwarder.forward_once()
    assert forwarder.pending() == 0 and forwarder.pending_door_statuses() == 0
    assert central.get_event(spooled_event.event_id).door_status is DoorStatus.REFUSED


def test_while_the_central_database_is_down_events_wait_and_then_all_arrive_once(
    local, central, spool, make_event, caplog
):
    outage = Outage(central.engine)
    forwarder = SpoolForwarder(
        spool, central, "gate-1", poll_s=0.05, backoff_initial_s=0.01, backoff_max_s=0.05
    ).start()
    try:
        first = spooled(local, make_event, 2, after=utcnow())
        forwarder.wake()
        assert forwarder.wait_drained(10)
        caplog.set_level(logging.INFO, logger="maskgate.store.spool")
        outage.begin()
        during = spooled(local, make_event, 4, after=first[-1].occurred_at)
        forwarder.wake()
        assert wait_until(lambda: outage.attempts >= 5, timeout=10), "the forwarder did not retry"
        assert not forwarder.connected and forwarder.outage is not None
        assert forwarder.pending() == 4  # waiting, nothing lost
        warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(warnings) == 1, "an outage is logged once, not once per retry"
        assert "test outage" in warnings[0].getMessage()

        outage.end()
        assert forwarder.wait_drained(10)
        assert wait_until(lambda: forwarder.last_outage and forwarder.last_outage.drained_after_s is not None)
    finally:
        forwarder.stop()
    assert forwarder.connected and forwarder.outage is None
    assert forwarder.last_outage.duration_s > 0 and forwarder.last_outage.ended_at is not None
    assert central.arrivals == [e.event_id for e in first + during]
    assert _central_count(central) == 6
    assert sum("back after" in r.getMessage() for r in caplog.records) == 1


def test_stop_leaves_a_forwarder_hung_on_the_central_database_behind_after_its_timeout(
    local, central, spool, make_event, monkeypatch
):
    """A hung connection (no answer, no error) must not keep the agent from exiting."""
    hung, release = threading.Event(), threading.Event()
    record_events = central.record_events

    def hanging(events):
        hung.set()
        release.wait(60)
        return record_events(events)

    monkeypatch.setattr(central, "record_events", hanging)
    spooled(local, make_event, 1)
    forwarder = SpoolForwarder(spool, central, "gate-1", poll_s=0.05).start()
    thread = forwarder._thread
    try:
        assert hung.wait(30), "the forwarder did not send"
        ended = forwarder.stop(drain_s=0.1, timeout=0.5)
        assert ended is False and not release.is_set() and thread.is_alive()
    finally:
        release.set()
        thread.join(30)
    assert not thread.is_alive()  # once answered it ended: it had been asked to stop
    assert forwarder.pending() == 0  # and what it was sending arrived


def test_an_unreachable_server_is_an_outage_not_a_crash(local, spool, make_event):
    spooled(local, make_event, 2)
    nowhere = EventStore(make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/maskgate"))
    forwarder = SpoolForwarder(spool, nowhere, "gate-1")
    with pytest.raises(CentralUnavailable, match="cannot connect"):
        forwarder.forward_once()
    assert forwarder.pending() == 2 and not forwarder.connected


def test_a_central_database_without_the_schema_is_refused(local, engine, spool, make_event):
    spooled(local, make_event, 1)
    forwarder = SpoolForwarder(spool, EventStore(engine), "gate-1")
    with pytest.raises(CentralUnavailable, match="no maskgate schema"):
        forwarder.forward_once()
    assert forwarder.pending() == 1


def test_an_event_the_central_database_lost_is_sent_again(local, central, spool, make_event, caplog):
    (spooled_event,) = spooled(local, make_event, 1)
    forwarder = SpoolForwarder(spool, central, "gate-1")
    drain(forwarder)
    with central.engine.begin() as connection:  # e.g. restored from an older backup
        connection.execute(delete(EventRow).where(EventRow.id == spooled_event.event_id))
    local.set_door_status(spooled_event.event_id, DoorStatus.OPENED, utcnow())

    drain(forwarder)

    assert "no event" in caplog.text
    assert central.get_event(spooled_event.event_id).door_status is DoorStatus.OPENED
    assert forwarder.pending() == 0 and forwarder.pending_door_statuses() == 0


@pytest.mark.integration
def test_an_event_the_central_database_refuses_is_quarantined_and_the_events_after_it_flow(
    local, spool, postgresql_url, make_event, caplog
):
    central = ArrivalLog(make_engine(postgresql_url))  # PostgreSQL enforces VARCHAR(64); SQLite does not
    migrate.upgrade(central.engine)
    first, refused, *after = (
        make_event(occurred_at=utcnow() + timedelta(seconds=i), model_version=version)
        for i, version in enumerate(["m-1", "m" * 65, "m-1", "m-1", "m-1"])
    )
    for e in (first, refused, *after):
        local.record_event(e)
    forwarder = SpoolForwarder(spool, central, "gate-1", batch_size=3)  # refused sits mid-batch

    drain(forwarder)

    assert central.arrivals == [e.event_id for e in (first, *after)]  # in order, none held back
    assert forwarder.connected and forwarder.outage is None  # refused data is not an outage
    assert forwarder.pending() == 0 and forwarder.quarantined() == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(refused.event_id) in errors[0].getMessage()
    assert "value too long" in errors[0].getMessage()
    assert not any("unavailable" in r.getMessage() for r in caplog.records)

    restarted = SpoolForwarder(spool, central, "gate-1")
    assert restarted.forward_once() is False and restarted.quarantined() == 1  # not sent again
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1  # logged once
    assert restarted.purge(now=utcnow() + timedelta(days=2)) == 4  # the forwarded ones go, it stays
    assert local.get_event(refused.event_id) == refused

    with spool.begin() as connection:  # what docs/operations.md says: correct it, then release it
        connection.execute(
            update(EventRow).where(EventRow.id == refused.event_id).values(model_version="m-2")
        )
        connection.execute(delete(spool_quarantine).where(spool_quarantine.c.event_id == refused.event_id))
    drain(restarted)
    assert central.get_event(refused.event_id).model_version == "m-2" and restarted.quarantined() == 0


def test_purge_keeps_what_is_not_forwarded_settled_or_sent(tmp_path, local, spool, make_event):
    central = EventStore(make_engine(f"sqlite:///{tmp_path / 'central.sqlite'}"))
    migrate.upgrade(central.engine)
    done, behind, unsent = make_event(), make_event(), make_event()
    recent = make_event(occurred_at=utcnow() + timedelta(days=1, hours=12))
    for e in (done, behind, recent):
        local.record_event(e)
    message = OutgoingMessage(OutboxKind.EVENT, "t/events", "{}")
    Outbox(spool).record_event(unsent, [message], now=utcnow())  # its event message is never published
    forwarder = SpoolForwarder(spool, central, "gate-1")
    drain(forwarder)
    local.set_door_status(behind.event_id, DoorStatus.OPENED, utcnow())  # not forwarded yet
    late = make_event()
    local.record_event(late)  # not forwarded yet

    assert forwarder.purge(now=utcnow() + timedelta(days=2)) == 1

    assert local.get_event(done.event_id) is None
    assert all(local.get_event(e.event_id) for e in (behind, unsent, recent, late))
    with spool.connect() as connection:
        assert connection.execute(select(func.count()).select_from(spool_forwarded)).scalar_one() == 3
    drain(forwarder)  # nothing the purge left behind is lost
    assert central.get_event(behind.event_id).door_status is DoorStatus.OPENED
    assert central.get_event(late.event_id) is not None


# -- the agent's wiring (gate/build.py) ---------------------------------------------------------------


def _config(database_url: str, spool: str = "") -> Config:
    return Config(database_url=database_url, paths=PathsConfig(spool=spool))


def test_without_a_spool_the_agent_writes_to_the_central_database(migrated_engine, database_url):
    from maskgate.gate.build import open_gate_store

    stores = open_gate_store(_config(database_url))
    assert stores.forwarder is None and stores.central_ok() and stores.spool_ok()
    assert stores.store.engine.url == migrated_engine.url


def test_a_spool_on_the_central_file_itself_is_no_spool(tmp_path):
    from maskgate.gate.build import spool_url

    path = tmp_path / "maskgate.sqlite"
    assert spool_url(_config(f"sqlite:///{path}", str(path))) is None
    assert spool_url(_config(f"sqlite:///{path}", str(tmp_path / "spool.sqlite"))) is not None
    assert spool_url(_config("postgresql://db.example/maskgate", "")) is None


def test_the_agent_starts_with_its_spool_while_the_central_database_is_down(tmp_path):
    from maskgate.gate.build import open_gate_store

    spool_path = tmp_path / "var" / "spool" / "gate.sqlite"
    stores = open_gate_store(_config(f"postgresql://postgres@127.0.0.1:{free_port()}/x", str(spool_path)))
    assert stores.forwarder is not None and spool_path.exists()
    assert migrate.current_revision(stores.store.engine) == migrate.head_revision()
    assert not stores.central_ok() and stores.spool_ok()


def test_a_central_database_without_the_schema_still_stops_the_agent(tmp_path, engine, database_url):
    from maskgate.gate.build import open_gate_store

    with pytest.raises(SchemaError):
        open_gate_store(_config(database_url, str(tmp_path / "spool.sqlite")))


def _central_count(store: EventStore) -> int:
    with store.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(EventRow)).scalar_one()


@pytest.mark.integration
@pytest.mark.slow
def test_the_agent_spools_while_the_central_database_is_down_and_forwards_on_its_next_run(tmp_path):
    central_url = f"sqlite:///{tmp_path / 'central.sqlite'}"
    env = {
        **os.environ,
        "MASKGATE_PATHS__SNAPSHOTS": str(tmp_path / "snaps"),
        "MASKGATE_PATHS__ACTIVE_MODEL": str(Path(__file__).parents[2] / "models" / "default"),
        "MASKGATE_PATHS__SPOOL": str(tmp_path / "spool" / "gate.sqlite"),
    }
    agent = [str(Path(sys.executable).parent / "maskgate"), "agent", "--source", "synthetic", "--no-mqtt"]

    def run(database_url: str) -> str:
        done = subprocess.run(
            [*agent, "--max-frames", "200"],
            env={**env, "MASKGATE_DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    down = run(f"postgresql://postgres@127.0.0.1:{free_port()}/maskgate")
    assert "central database unavailable" in down and "events wait in the spool" in down
    spool = EventStore(make_engine(f"sqlite:///{tmp_path / 'spool' / 'gate.sqlite'}"))
    spooled_ids = {e.event_id for e in spool.list_events().events}
    assert spooled_ids, down

    central = EventStore(make_engine(central_url))
    migrate.upgrade(central.engine)
    up = run(central_url)
    assert "wait in the spool" not in up
    stored = {e.event_id for e in central.list_events().events}
    assert spooled_ids < stored  # the first run's events, and the second run's own
