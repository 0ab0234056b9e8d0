"""The dashboard's gate watcher: a real gate's availability and state over the real broker land in
the `gates` table (SQLite and PostgreSQL); malformed or foreign reports change nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from maskgate.config import Config
from maskgate.dashboard.gatewatch import GateWatcher
from maskgate.gate.comms import DoorLink, MqttClient
from maskgate.gate.comms.client import BrokerSettings, IncomingMessage
from maskgate.gate.comms.payloads import GateState
from maskgate.store import EventStore, StoreError, make_engine
from tests.gate.comms.brokers import make_config, wait_until


def gate_row(store: EventStore, gate_id: str):
    return next((gate for gate in store.list_gates() if gate.gate_id == gate_id), None)


@pytest.fixture
def watcher(store: EventStore, prefix: str) -> Iterator[GateWatcher]:
    running = GateWatcher(make_config(prefix), store).start()
    assert running.client.wait_connected(10)
    yield running
    running.stop()


def publisher(prefix: str) -> MqttClient:
    client = MqttClient(
        BrokerSettings.from_config(make_config(prefix).mqtt), f"test-pub-{uuid.uuid4().hex[:8]}"
    )
    client.start()
    assert client.wait_connected(10)
    return client


@pytest.mark.integration
def test_a_running_gate_shows_up_with_its_state_and_goes_stopped(store, prefix, watcher):
    gate_id = f"g{uuid.uuid4().hex[:8]}"
    link = DoorLink(make_config(prefix, gate_id), store)
    link.start()
    try:
        assert wait_until(
            lambda: (gate_row(store, gate_id) or None) and gate_row(store, gate_id).availability
        )
        assert link.client.wait_connected(10)
        link.publish_state(camera_ok=True, fps=12.5, model_version="m-7")
        assert wait_until(lambda: gate_row(store, gate_id).model_version == "m-7", timeout=10)
        row = gate_row(store, gate_id)
        assert row.availability == "online" and row.fps == 12.5 and row.last_seen_at is not None
    finally:
        link.stop()
    assert wait_until(lambda: gate_row(store, gate_id).availability == "stopped", timeout=10)


@pytest.mark.integration
def test_malformed_and_foreign_reports_change_nothing(store, prefix, watcher):
    client = publisher(prefix)
    try:
        impostor = GateState(gate_id="other-gate", camera_ok=True, fps=99.0, model_version="evil")
        client.publish(f"{prefix}/victim/state", impostor.encode())  # claims to be another gate
        client.publish(f"{prefix}/victim/availability", b"maybe")  # not a known word
        client.publish(f"{prefix}/victim/state", b"{not json")
        client.publish(f"{prefix}/bad gate!/availability", b"online")  # not a gate id
        client.publish(f"{prefix}/fine/availability", b"online")  # and after all that, a good one
        assert wait_until(lambda: gate_row(store, "fine") is not None, timeout=10)
    finally:
        client.stop()
    assert gate_row(store, "victim") is None and gate_row(store, "other-gate") is None
    assert {gate.gate_id for gate in store.list_gates()} == {"fine"}


class FlakyStore:
    """A store whose database is down for the first `failures` writes (a unit stand-in)."""

    def __init__(self, failures: int):
        self.failures, self.written = failures, []

    def update_gate(self, gate_id: str, **values) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreError("database unreachable")
        self.written.append((gate_id, values))


def test_a_report_the_database_refused_is_written_when_it_returns(monkeypatch):
    monkeypatch.setattr("maskgate.dashboard.gatewatch.RETRY_S", 0.05)
    store = FlakyStore(failures=2)
    watcher = GateWatcher(Config(), store)  # never started on the broker: messages are fed directly
    watcher._worker = None
    watcher._on_availability(IncomingMessage("maskgate/g1/availability", b"online"))
    watcher._on_availability(IncomingMessage("maskgate/g1/availability", b"offline"))  # newer wins
    watcher._write_pending()
    watcher._write_pending()
    assert store.written == []  # two refusals, the report still waits
    watcher._write_pending()
    assert [(gate, values["availability"]) for gate, values in store.written] == [("g1", "offline")]


@pytest.mark.integration
def test_a_report_waits_through_a_real_database_outage(store: EventStore):
    """The driver's own errors (OperationalError), not only StoreError, keep a report waiting."""
    down = EventStore(make_engine("postgresql://gate@127.0.0.1:1/maskgate"))  # nothing listens there
    watcher = GateWatcher(Config(), down)  # never started on the broker: messages are fed directly
    watcher._on_availability(IncomingMessage("maskgate/g-outage/availability", b"online"))
    watcher._write_pending()
    assert gate_row(store, "g-outage") is None
    watcher.store = store  # the database is back
    watcher._write_pending()
    assert gate_row(store, "g-outage").availability == "online"
