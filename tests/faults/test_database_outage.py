"""The central PostgreSQL stops mid-run and starts again: the door never notices, the spool catches up.

A PostgreSQL server of this test's own (initdb + pg_ctl in a temporary folder, on a free port;
never the shared one on 5432) is the central database. A gate with a local SQLite spool
submits a decision every 50 ms to a real door controller over the shared Mosquitto. The
server is stopped for 3 s and started again. Asserted: every door command during the outage
was still sent and acknowledged (the door never depends on the central database), no door
opened late, every event reached the central database exactly once and in order (an
``AFTER INSERT`` trigger there notes each arrival), door outcomes followed, and the forwarder
recovered by itself. The recovery time (server back → backlog in the central database) is
measured and printed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from maskgate.core import Action, Decision, DoorStatus, Label, utcnow
from maskgate.gate.comms import DoorLink
from maskgate.gate.doorsim import DoorSimulator
from maskgate.store import EventStore, make_engine, migrate
from maskgate.store.spool import SpoolForwarder, prepare_spool
from tests.faults.conftest import SECRET, Gate
from tests.gate.comms.brokers import Spy, free_port, make_config, make_decision, port_open, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SUBMIT_EVERY_S = 0.05
OUTAGE_S = 3.0
DRAIN_LIMIT_S = 60.0  # generous: the forwarder backs off to 5 s at most, so a few seconds is normal
EXPECTED_DOOR = {Action.ALLOW: DoorStatus.OPENED, Action.DENY: DoorStatus.REFUSED}

ARRIVALS_DDL = [
    "CREATE TABLE arrivals (seq bigserial PRIMARY KEY, event_id uuid NOT NULL)",
    """CREATE FUNCTION note_arrival() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN INSERT INTO arrivals (event_id) VALUES (NEW.id); RETURN NEW; END $$""",
    "CREATE TRIGGER note_arrival AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION note_arrival()",
]


class PrivatePostgres:
    """A PostgreSQL server of our own in a temporary folder; stopped and started mid-test.

    initdb refuses to run as root, so as root the server runs as the `postgres` user (its
    folder then lives directly under the system temporary folder, which that user can reach).
    """

    def __init__(self, bindir: Path, base: Path, port: int, user: str | None):
        self.bindir, self.base, self.port = bindir, base, port
        self.data = base / "data"
        self.log = base / "server.log"
        self._as_user = ["runuser", "-u", user, "--"] if user else []

    def _run(self, tool: str, *args: str) -> None:
        command = [*self._as_user, str(self.bindir / tool), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}{log}")

    def init(self) -> PrivatePostgres:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    @property
    def running(self) -> bool:
        return port_open(self.port)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found or not (found[-1].parent / "initdb").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin")
    user = None
    base = tmp_path / "pg"
    if os.geteuid() == 0:
        user = "postgres"
        base = Path(tempfile.mkdtemp(prefix="maskgate-pg-"))
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    else:
        base.mkdir()
    server = PrivatePostgres(found[-1].parent, base, free_port(), user).init()
    server.start()
    try:
        yield server
    finally:
        if server.running:
            with contextlib.suppress(RuntimeError):
                server.stop("immediate")
        if user is not None:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Engine]:
    """The gate's local spool, as the agent prepares it with `paths.spool` set."""
    engine = make_engine(f"sqlite:///{tmp_path / 'spool' / 'gate.sqlite'}")
    prepare_spool(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def central(private_postgres: PrivatePostgres) -> Iterator[EventStore]:
    """The central database, noting the order in which events arrive (an AFTER INSERT trigger)."""
    store = EventStore(make_engine(private_postgres.url))
    migrate.upgrade(store.engine)
    with store.engine.begin() as connection:
        for statement in ARRIVALS_DDL:
            connection.execute(text(statement))
    yield store
    store.engine.dispose()


@pytest.fixture
def gate(prefix: str, spy: Spy, spool: Engine) -> Iterator[Gate]:
    """A gate writing to its spool, with its door controller, on the shared broker.

    Its id is unique: the MQTT client ids derive from it, and a second client with the same id
    on the shared broker (another test running meanwhile) would take this one's connection over.
    """
    gate_id = f"gate-{uuid.uuid4().hex[:8]}"
    config = make_config(prefix, gate_id, command_secret=SECRET)
    door = DoorSimulator(config, gate_id, open_s=0.05, reconnect_max_s=0.5)
    link = DoorLink(config, EventStore(spool), reconnect_max_s=0.5)
    door.start()
    link.start()
    try:
        assert door.client.wait_connected(10) and link.client.wait_connected(10)
        time.sleep(0.3)  # the door's subscription is in place before the first command
        yield Gate(config, link.store, link, door, spy)
    finally:
        link.stop()
        door.stop()


def test_central_database_stopped_and_started(
    private_postgres: PrivatePostgres, central: EventStore, spool: Engine, gate: Gate
):
    forwarder = SpoolForwarder(spool, central, gate.link.gate_id).start()  # production backoff 0.5 -> 5 s
    decisions: list[tuple[Decision, float]] = []  # each with time.monotonic() of its submit
    stop = threading.Event()

    def submit_steadily() -> None:
        labels = [Label.WITH_MASK, Label.WITH_MASK, Label.WITHOUT_MASK]
        while not stop.is_set():
            n = len(decisions)
            decision = make_decision(gate.link.gate_id, label=labels[n % 3], track_id=n)
            gate.link.submit(decision)
            decisions.append((decision, time.monotonic()))
            forwarder.wake()
            time.sleep(SUBMIT_EVERY_S)

    submitter = threading.Thread(target=submit_steadily, name="submitter")
    try:
        assert wait_until(lambda: forwarder.connected, timeout=10)
        submitter.start()
        time.sleep(1.5)

        private_postgres.stop()
        down_at, down_wall = time.monotonic(), utcnow()
        time.sleep(OUTAGE_S)
        assert not forwarder.connected, "the forwarder did not notice the outage"
        spooled = forwarder.pending()
        private_postgres.start()
        back_at, back_wall = time.monotonic(), utcnow()
        backlog = sum(1 for _, at in decisions if at < back_at)
        caught_up = wait_until(lambda: _arrived(central) >= backlog, timeout=DRAIN_LIMIT_S, interval=0.02)
        recovery_s = time.monotonic() - back_at
        report = (
            f"central database down {back_at - down_at:.1f} s, {spooled} events spooled by then; "
            f"all {backlog} events submitted before it was back were in it {recovery_s:.2f} s later"
        )
        print(f"\nrecovery: {report}")
        assert caught_up, f"spool not drained within {DRAIN_LIMIT_S:g} s: {report}"

        time.sleep(1.0)  # the gate carries on as before
        stop.set()
        submitter.join()
        try:
            gate.check_delivery([d for d, _ in decisions])  # nothing lost or doubled, no late opening
        except AssertionError as exc:
            outcomes = Counter(e.door_status for e in gate.events())
            raise AssertionError(
                f"{exc}; door outcomes {outcomes}, door {gate.door.outcomes}; {report}"
            ) from None
        assert forwarder.wait_drained(DRAIN_LIMIT_S), (forwarder.pending(), forwarder.pending_door_statuses())
    finally:
        stop.set()
        forwarder.stop()

    # The door never depended on the central database: every command was answered as it should
    # be, also those issued while it was down, and answered then, not after.
    ids = [d.decision_id for d, _ in decisions]
    during = [d.decision_id for d, at in decisions if down_at <= at <= back_at - 0.5]
    assert len(during) > 20, report
    local_events = {e.event_id: e for e in gate.events()}
    for event in local_events.values():
        assert event.door_status is EXPECTED_DOOR[event.action], (event, report)
    for event_id in during:
        assert down_wall < local_events[event_id].door_at < back_wall, (local_events[event_id], report)

    # Every event reached the central database exactly once, in the order it happened.
    with central.engine.connect() as connection:
        arrivals = list(connection.scalars(text("SELECT event_id FROM arrivals ORDER BY seq")))
    by_time = sorted(local_events.values(), key=lambda e: (e.occurred_at, e.event_id))
    assert arrivals == [e.event_id for e in by_time] == ids, report
    stored = central.list_events(limit=1000).events
    assert len(stored) == len(ids) and {e.event_id for e in stored} == set(ids)

    # Door outcomes followed, also those recorded while the central database was down.
    for event in stored:
        local = local_events[event.event_id]
        assert (event.door_status, event.door_at) == (local.door_status, local.door_at), event

    # The forwarder saw one outage and recovered by itself.
    outage = forwarder.last_outage
    assert forwarder.connected and forwarder.outage is None and outage is not None
    assert outage.duration_s >= OUTAGE_S - 0.5 and outage.drained_after_s is not None, outage
    print(
        f"recovery: forwarder saw the outage for {outage.duration_s:.1f} s and drained the spool "
        f"{outage.drained_after_s:.2f} s after reconnecting"
    )


def _arrived(central: EventStore) -> int:
    """Events the central database has; 0 while it cannot be asked yet."""
    try:
        with central.engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM arrivals")).scalar_one())
    except Exception:
        return 0
