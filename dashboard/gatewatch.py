"""The dashboard's view of the gates: their retained availability and state, kept in the `gates` table.

Each gate publishes ``<prefix>/<gate>/availability`` (``online`` / ``stopped``, or ``offline``
from its Last Will) and ``<prefix>/<gate>/state`` (camera, frames/s, model version, counters),
both retained. :class:`GateWatcher` subscribes to both for every gate and records them with
:meth:`EventStore.update_gate`, so the gates page shows what each gate last said and when.

Messages arrive on paho's network thread, which must not wait for the database: they are parsed
there (a malformed message or a topic that names no valid gate is logged and dropped) and written
by a worker thread. When the database is down the latest report per gate waits and is retried;
only the newest report of each gate matters, so nothing queues up without bound.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

from maskgate.config import Config
from maskgate.core import utcnow
from maskgate.gate.comms.client import BrokerSettings, IncomingMessage, MqttClient
from maskgate.gate.comms.payloads import PayloadError, parse_availability, parse_gate_state
from maskgate.gate.comms.topics import TopicError, all_gates, check_gate_id
from maskgate.store import EventStore, StoreError
from maskgate.store.db import error_reason

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_S = 5.0  # how often reports the database refused are tried again


@dataclass(frozen=True, slots=True)
class GateReport:
    """What one message said about one gate; None fields are not part of it."""

    gate_id: str
    seen_at: datetime | None  # None: not news (a retained message could be hours old)
    availability: str | None = None
    fps: float | None = None
    model_version: str | None = None


class GateWatcher:
    """Keeps the `gates` table current from the gates' retained MQTT topics."""

    def __init__(self, config: Config, store: EventStore):
        self.store = store
        self.prefix = config.mqtt.topic_prefix
        self.client = MqttClient(
            BrokerSettings.from_config(config.mqtt), f"maskgate-dashboard-gates-{id(self)}"
        )
        self.client.subscribe(all_gates(self.prefix, "availability"), self._on_availability)
        self.client.subscribe(all_gates(self.prefix, "state"), self._on_state)
        self._pending: dict[tuple[str, str], GateReport] = {}  # (gate, topic leaf) -> newest report
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self.recorded = 0  # reports written (tests, logs)

    def start(self) -> GateWatcher:
        self._worker = threading.Thread(target=self._run, name="gate-watcher", daemon=True)
        self._worker.start()
        self.client.start()
        return self

    def stop(self) -> None:
        self.client.stop()
        self._stopping.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    # -- MQTT thread: parse and hand over ---------------------------------------------------------

    def _on_availability(self, message: IncomingMessage) -> None:
        parsed = self._parse(message, parse_availability, "availability")
        if parsed is not None:
            gate_id, availability = parsed
            seen_at = None if message.retain else utcnow()
            self._offer("availability", GateReport(gate_id, seen_at, availability=availability))

    def _on_state(self, message: IncomingMessage) -> None:
        parsed = self._parse(message, parse_gate_state, "state")
        if parsed is None:
            return
        gate_id, state = parsed
        if state.gate_id != gate_id:  # a gate may only speak for itself (the ACL enforces it too)
            log.warning("ignored state on %s: it claims to be gate %r", message.topic, state.gate_id)
            return
        # A retained state is as old as the gate says (never later than now: its clock may be ahead).
        seen_at = min(state.at, utcnow()) if message.retain else utcnow()
        report = GateReport(gate_id, seen_at, fps=state.fps, model_version=state.model_version)
        self._offer("state", report)

    def _parse(
        self, message: IncomingMessage, parse: Callable[[bytes], T], what: str
    ) -> tuple[str, T] | None:
        """(gate id, parsed payload), or None after logging why the message is ignored."""
        gate_id = self._gate_of(message.topic)
        if gate_id is None:
            return None
        try:
            return gate_id, parse(message.payload)
        except PayloadError as exc:
            log.warning("ignored %s on %s: %s", what, message.topic, exc)
            return None

    def _gate_of(self, topic: str) -> str | None:
        parts = topic.split("/")
        try:
            if len(parts) != 3 or parts[0] != self.prefix:
                raise TopicError(f"not a gate topic under {self.prefix!r}")
            return check_gate_id(parts[1])
        except TopicError as exc:
            log.warning("ignored message on %r: %s", topic[:200], exc)
            return None

    def _offer(self, leaf: str, report: GateReport) -> None:
        with self._lock:
            self._pending[(report.gate_id, leaf)] = report
        self._wake.set()

    # -- worker thread: write -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(RETRY_S)
            self._wake.clear()
            try:
                self._write_pending()
            except Exception:  # a bug must not stop the gates page from ever updating again
                log.exception("gate reports: writing them failed; the next ones are tried in %s s", RETRY_S)
        self._write_pending()  # what arrived just before stop

    def _write_pending(self) -> None:
        with self._lock:
            reports, self._pending = self._pending, {}
        failed = {}
        for key, report in reports.items():
            try:
                self.store.update_gate(
                    report.gate_id,
                    availability=report.availability,
                    fps=report.fps,
                    model_version=report.model_version,
                    seen_at=report.seen_at,
                )
                self.recorded += 1
            except (StoreError, SQLAlchemyError) as exc:  # the driver's errors are not StoreErrors
                log.warning(
                    "gate %s: its report waits for the database: %s", report.gate_id, error_reason(exc)
                )
                failed[key] = report
        if failed:
            with self._lock:  # a newer report that arrived meanwhile wins
                self._pending = {**failed, **self._pending}
