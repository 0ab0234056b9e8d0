"""The gate's MQTT link to its door and to building systems (DESIGN.md, "MQTT contract").

:class:`DoorLink` is what the agent calls. ``submit(decision)`` stores the event and its two
messages (door command, event) in one transaction and returns; a worker thread publishes
from the outbox, watches for acks and records what became of each door command:

* an ack (``opened`` / ``refused`` / ``expired``) with the round-trip time from publish to ack;
* ``no_ack`` when none arrives within ``mqtt.ack_timeout_s`` (a late ack still overwrites it);
* ``expired`` when the command could not be sent before its ``expires_at`` (broker down):
  it is then never sent. A late "open" is a security hole; an incident is not;
* ``no_ack`` as well when it expires after a publish that may have reached the door (the
  connection died, or the gate stopped, before the broker's PUBACK): the door may have opened.

Event messages wait in the outbox as long as it takes (at least once; dedupe on event_id).
The worker is the only thread that publishes outbox rows or writes door outcomes, so no
message is published twice by this process at the same time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.exc import SQLAlchemyError

from maskgate.config import Config
from maskgate.core import AckReason, Action, Decision, DoorStatus, Event, utcnow
from maskgate.gate.comms.acks import AckTracker
from maskgate.gate.comms.client import (
    MAX_INFLIGHT,
    BrokerSettings,
    IncomingMessage,
    MqttClient,
    MqttConfigError,
    Publication,
    PublishState,
    Will,
)
from maskgate.gate.comms.homeassistant import discovery_messages
from maskgate.gate.comms.payloads import (
    MAX_TTL,
    ActiveModel,
    DoorAck,
    DoorCommand,
    GateState,
    PayloadError,
    encode_event,
    parse_active_model,
    parse_door_ack,
    parse_ha_status,
)
from maskgate.gate.comms.topics import HOMEASSISTANT_STATUS, Topics
from maskgate.store import EventStore, Outbox, OutboxKind, OutboxMessage, OutgoingMessage, StoreError
from maskgate.store.db import error_reason

log = logging.getLogger("maskgate.gate.link")

# Event messages handed to the broker and not yet acknowledged: well under paho's window, so that a
# door command always finds room in it and goes on the wire at once, not queued inside paho
# behind events (after an outage the backlog of events would otherwise delay it).
MAX_EVENTS_IN_FLIGHT = MAX_INFLIGHT // 2
EXPIRY_SWEEP_S = 0.05  # how often unsent door commands are checked for expiry while they can be stuck
POLL_S = 1.0  # the outbox is read at least this often even when nothing announced new rows
OUTBOX_KEEP = timedelta(days=1)  # sent and expired rows are deleted after this
PURGE_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True)
class _AckReceived:
    ack: DoorAck
    received_at: float  # time.monotonic()


@dataclass(slots=True)
class _InFlight:
    message: OutboxMessage
    publication: Publication


# Refusals that mean misconfiguration or an attack rather than a person turned away.
SUSPICIOUS_ACK_REASONS = frozenset(
    {
        AckReason.BAD_SIGNATURE,
        AckReason.UNSIGNED,
        AckReason.REPLAY,
        AckReason.WRONG_GATE,
        AckReason.FROM_FUTURE,
        AckReason.STALE,
        AckReason.TTL_TOO_LONG,
    }
)


class DoorLink:
    """One gate's MQTT link: door commands with acks, events, availability, state, discovery."""

    def __init__(
        self,
        config: Config,
        store: EventStore,
        *,
        on_door_status: Callable[[Event], None] | None = None,
        on_active_model: Callable[[ActiveModel], None] | None = None,
        reconnect_max_s: float = 5.0,
    ):
        """`on_door_status` gets each event once its door outcome is recorded (worker thread);
        `on_active_model` gets each valid ``models/active`` announcement (MQTT thread). Both
        must return quickly.
        """
        mqtt = config.mqtt
        if not 0 < mqtt.door_command_ttl_s <= MAX_TTL.total_seconds():
            raise MqttConfigError(f"mqtt.door_command_ttl_s must be in (0, {MAX_TTL.total_seconds():g}]")
        if mqtt.ack_timeout_s <= 0:
            raise MqttConfigError("mqtt.ack_timeout_s must be positive")
        self.config = config
        self.topics = Topics(mqtt.topic_prefix, config.gate_id)
        self.gate_id = config.gate_id
        self.store = store
        self.outbox = Outbox(store.engine, config.gate_id)  # only this gate's rows, in a shared database
        self._secret = mqtt.command_secret
        self._ttl_s = mqtt.door_command_ttl_s
        self._on_door_status = on_door_status
        self._on_active_model = on_active_model
        self.client = MqttClient(
            BrokerSettings.from_config(mqtt),
            f"maskgate-gate-{self.gate_id}",
            will=Will(self.topics.availability, "offline"),
            on_connect=self._on_connect,
            on_published=self._wake,
            reconnect_max_s=reconnect_max_s,
        )
        self.client.subscribe(self.topics.door_ack, self._on_ack_message)
        if on_active_model is not None:
            self.client.subscribe(self.topics.models_active, self._on_model_message)
        if mqtt.homeassistant_discovery:
            self.client.subscribe(HOMEASSISTANT_STATUS, self._on_ha_status)
        self._acks = AckTracker(mqtt.ack_timeout_s)
        self._inbox: queue.SimpleQueue[_AckReceived | None] = queue.SimpleQueue()
        self._in_flight: dict[int, _InFlight] = {}
        self._retry_after: dict[int, float] = {}  # outbox id -> monotonic time (after a refusal)
        self._refusals: dict[int, int] = {}  # outbox id -> refusals in a row (for the back-off)
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._counts_lock = threading.Lock()
        self._counts = {action: 0 for action in Action}
        # Outbox rows waiting, as last counted by the worker (every POLL_S) plus what was submitted
        # since: the state message reads this, so the agent loop's heartbeat never waits on the
        # database. Guarded by _counts_lock.
        self._outbox_pending = 0
        self._pending_counted_at = 0.0
        self._last_state: GateState | None = None
        self._last_sweep = self._last_poll = self._last_purge = 0.0
        # Set when the outbox may hold something to publish (a submit, a reconnect, a failed
        # publish); lets the worker skip reading the outbox on cycles woken by PUBACKs and acks.
        self._dirty = True
        self._expiry_due = False  # a pending door command was seen past its expires_at
        # Door outcomes the database did not take (it was down); retried every cycle.
        self._unrecorded: list[tuple[uuid.UUID, DoorStatus, datetime, float | None, AckReason | None]] = []
        self._database_down_since: float | None = None  # time.monotonic(), while the database fails
        self._database_failed = False  # in the current cycle

    # -- the agent's interface -------------------------------------------------------------------

    def start(self) -> None:
        """Connect (in the background; the outbox keeps everything until the broker answers)."""
        self.store.ensure_gate(self.gate_id)
        self._count_pending()  # what an earlier run left
        self._worker = threading.Thread(target=self._run, name=f"door-link-{self.gate_id}", daemon=True)
        self._worker.start()
        self.client.start()

    def stop(self, drain_s: float = 2.0, join_s: float = 5.0) -> None:
        """Give the outbox up to `drain_s` to empty, publish ``stopped`` and disconnect cleanly.

        Whatever is still pending stays in the outbox for the next start; a publish still
        unanswered by the broker is recorded as one that may have arrived. Door outcomes still
        in memory (acks received, outcomes the database did not take) are recorded once more;
        any the database still refuses are logged. A failing database never keeps the client
        from disconnecting cleanly, nor a worker stuck in a database call: `join_s` bounds the drain
        and the wait for the worker together, after which the stop goes on without it (a daemon
        thread; what it had not recorded waits in the outbox for the next start). The client's
        own stop (the "stopped" message) takes up to 2 s more.
        """
        if self._worker is None:
            return
        deadline = time.monotonic() + join_s
        self.wait_idle(min(drain_s, join_s))
        self._stopping.set()
        self._wake()
        self._worker.join(max(0.0, deadline - time.monotonic()))
        stuck, self._worker = self._worker.is_alive(), None
        self.client.stop(final=[(self.topics.availability, "stopped", True)])
        if stuck:  # it may still write: recording from here too would race it
            log.error("gate %s: door link worker busy after %g s; stopped without it", self.gate_id, join_s)
            return
        # The worker is gone: this thread is now the only one writing outbox rows and door outcomes.
        self._record_on_stop()

    def _record_on_stop(self) -> None:
        try:
            self._settle_in_flight(stopped=True)
        except SQLAlchemyError as exc:
            self._database_down(exc)
        except Exception:
            log.exception("gate %s: cannot settle the messages in flight on stop", self.gate_id)
        for message_id, flight in self._in_flight.items():
            state = flight.publication.state
            log.error(
                "gate %s: outbox message %d (%s) for event %s %s; not recorded (database unavailable)",
                self.gate_id,
                message_id,
                flight.message.kind.value,
                flight.message.event_id,
                {PublishState.SENT: "was acknowledged by the broker", PublishState.FAILED: "was refused"}.get(
                    state, "may have reached the broker"
                ),
            )
        for item in self._drain_inbox():
            self._record_ack(item)
        self._retry_unrecorded()
        for decision_id, status, *_ in self._unrecorded:
            log.error(
                "gate %s: door status %s for event %s lost on stop: the database did not take it",
                self.gate_id,
                status.value,
                decision_id,
            )

    def submit(self, decision: Decision, snapshot_path: str | None = None) -> Event:
        """Record the decision's event and enqueue its door command and event message, atomically.

        Returns the stored event at once (door status not yet known); publishing happens on the
        worker thread. Submitting the same decision twice stores and sends it once. Raises the
        store's errors (the agent decides what a failing database means).
        """
        if decision.gate_id != self.gate_id:
            raise ValueError(f"decision for gate {decision.gate_id!r} submitted to gate {self.gate_id!r}")
        event = Event.from_decision(decision, snapshot_path)
        command = DoorCommand.from_decision(decision, self._ttl_s)
        messages = [
            OutgoingMessage(
                OutboxKind.DOOR_COMMAND,
                self.topics.door_command,
                command.encode(self._secret).decode(),
                expires_at=command.expires_at,
            ),
            OutgoingMessage(OutboxKind.EVENT, self.topics.events, encode_event(event).decode()),
        ]
        if self.outbox.record_event(event, messages, now=utcnow()):
            with self._counts_lock:
                self._counts[decision.action] += 1
                self._outbox_pending += len(messages)
            self._dirty = True
            self._wake()
            return event
        log.info(
            "gate %s: decision %s was already submitted; not sent again", self.gate_id, decision.decision_id
        )
        return self.store.get_event(event.event_id) or event

    def publish_state(self, *, camera_ok: bool, fps: float, model_version: str) -> GateState:
        """Publish the retained state (re-sent on every reconnect); the counters are this link's."""
        with self._counts_lock:
            counts, pending = dict(self._counts), self._outbox_pending
        state = GateState(
            gate_id=self.gate_id,
            camera_ok=bool(camera_ok),
            fps=float(fps),
            model_version=model_version,
            decisions=sum(counts.values()),
            allowed=counts[Action.ALLOW],
            denied=counts[Action.DENY],
            warned=counts[Action.WARN],
            outbox_pending=pending,
        )
        self._last_state = state
        self.client.publish(self.topics.state, state.encode(), qos=1, retain=True)
        return state

    @property
    def connected(self) -> bool:
        return self.client.connected

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is pending, in flight or waiting for an ack (tests, demo, shutdown).

        A database that fails meanwhile counts as not idle (logged once); it never raises.
        """
        deadline = time.monotonic() + timeout
        reported = False
        while time.monotonic() < deadline:
            if not self._in_flight and not len(self._acks):
                try:
                    if self.outbox.counts().pending == 0:
                        return True
                except SQLAlchemyError as exc:
                    if not reported:
                        reported = True
                        log.warning(
                            "gate %s: cannot count the outbox (%s); not idle",
                            self.gate_id,
                            error_reason(exc),
                        )
            time.sleep(0.01)
        return False

    # -- MQTT callbacks (paho's network thread: parse, hand over, return) -----------------------

    def _on_connect(self) -> None:
        self.client.publish(self.topics.availability, "online", qos=1, retain=True)
        if self._last_state is not None:
            self.client.publish(self.topics.state, self._last_state.encode(), qos=1, retain=True)
        if self.config.mqtt.homeassistant_discovery:
            self._publish_discovery()
        self._dirty = True
        self._wake()

    def _on_ack_message(self, message: IncomingMessage) -> None:
        try:
            ack = parse_door_ack(message.payload, self._secret)
        except PayloadError as exc:
            log.warning("gate %s: rejected message on %s: %s", self.gate_id, message.topic, exc)
            return
        if ack.gate_id != self.gate_id:
            log.warning(
                "gate %s: rejected ack on %s: it is for gate %r", self.gate_id, message.topic, ack.gate_id
            )
            return
        if message.correlation_data is not None and message.correlation_data != str(ack.decision_id).encode():
            log.warning(
                "gate %s: rejected ack on %s: correlation data does not match decision_id %s",
                self.gate_id,
                message.topic,
                ack.decision_id,
            )
            return
        self._inbox.put(_AckReceived(ack, message.received_at or time.monotonic()))

    def _on_model_message(self, message: IncomingMessage) -> None:
        if not message.payload:
            return  # an empty retained message clears the topic: nothing to load
        try:
            model = parse_active_model(message.payload)
        except PayloadError as exc:
            log.warning("gate %s: rejected message on %s: %s", self.gate_id, message.topic, exc)
            return
        if self._on_active_model is not None:
            self._on_active_model(model)

    def _on_ha_status(self, message: IncomingMessage) -> None:
        try:
            status = parse_ha_status(message.payload)
        except PayloadError as exc:
            log.warning("gate %s: rejected message on %s: %s", self.gate_id, message.topic, exc)
            return
        if status == "online":
            log.info("gate %s: Home Assistant is online; re-sending discovery", self.gate_id)
            self._publish_discovery()

    def _publish_discovery(self) -> None:
        for topic, payload in discovery_messages(self.topics):
            self.client.publish(topic, payload, qos=1, retain=False)

    def _wake(self) -> None:
        self._inbox.put(None)

    # -- the worker --------------------------------------------------------------------------------

    def _run(self) -> None:
        self._recover_unacknowledged()
        while not self._stopping.is_set():
            received = self._wait_for_work()
            self._database_failed = False
            try:
                self._cycle(received)
            except SQLAlchemyError as exc:  # the database is down; the outbox keeps everything
                self._database_down(exc)
            except Exception:
                log.exception("gate %s: door link cycle failed; retrying in 1 s", self.gate_id)
            else:
                if not self._database_failed:
                    self._database_back()
                continue
            # The next cycle reads the outbox again (and so finds out whether the database is back).
            self._dirty = True
            self._stopping.wait(1.0)

    def _database_down(self, exc: SQLAlchemyError) -> None:
        """One log line per outage, with the driver's reason; the cycle is retried every second."""
        self._database_failed = True
        if self._database_down_since is None:
            self._database_down_since = time.monotonic()
            log.warning(
                "gate %s: database unavailable (%s); door link retrying every 1 s "
                "(the outbox and door outcomes wait)",
                self.gate_id,
                error_reason(exc),
            )

    def _database_back(self) -> None:
        if self._database_down_since is not None:
            log.warning(
                "gate %s: database back after %.1f s",
                self.gate_id,
                time.monotonic() - self._database_down_since,
            )
            self._database_down_since = None

    def _wait_for_work(self) -> list[_AckReceived]:
        timeout = 0.1 if self._in_flight else 0.25  # PUBACKs and acks wake it sooner
        deadline = self._acks.next_deadline()
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - time.monotonic()))
        try:
            first = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return []
        return [first, *self._drain_inbox()] if first is not None else self._drain_inbox()

    def _drain_inbox(self) -> list[_AckReceived]:
        items: list[_AckReceived] = []
        try:
            while True:
                item = self._inbox.get_nowait()
                if item is not None:
                    items.append(item)
        except queue.Empty:
            pass
        return items

    def _cycle(self, received: list[_AckReceived]) -> None:
        self._retry_unrecorded()
        for item in received:
            self._record_ack(item)
        self._settle_in_flight()
        now, tick = utcnow(), time.monotonic()
        connected = self.client.connected
        # Unsent door commands can only be stuck while disconnected or backing off; otherwise
        # they are published the moment they are submitted. The poll covers anything else.
        stuck = not connected or bool(self._retry_after) or self._expiry_due
        if (stuck and tick - self._last_sweep >= EXPIRY_SWEEP_S) or tick - self._last_poll >= POLL_S:
            self._last_sweep, self._expiry_due = tick, False
            for event in self.outbox.expire_due(now, exclude=self._in_flight.keys()):
                why = (
                    "expired unanswered; it may have reached the door (published, never acknowledged "
                    "by the broker): no_ack"
                    if event.door_status is DoorStatus.NO_ACK
                    else "expired before it could be sent"
                )
                log.warning("gate %s: door command for %s %s (incident)", self.gate_id, event.event_id, why)
                self._notify(event)
        if connected and (self._dirty or tick - self._last_poll >= POLL_S):
            self._last_poll = tick
            self._dirty = False  # before reading: a submit from now on sets it again
            self._publish_pending()
        if tick - self._pending_counted_at >= POLL_S:
            self._count_pending()
        for decision_id in self._acks.overdue(time.monotonic()):
            log.warning(
                "gate %s: no ack for door command %s within %g s (incident)",
                self.gate_id,
                decision_id,
                self._acks.timeout_s,
            )
            self._record_status(decision_id, DoorStatus.NO_ACK, utcnow(), None)
        if time.monotonic() - self._last_purge >= PURGE_EVERY_S:
            self._last_purge = time.monotonic()
            self.outbox.purge(now - OUTBOX_KEEP)
            self._retry_after = {k: t for k, t in self._retry_after.items() if t > self._last_purge}
            self._refusals = {
                k: n for k, n in self._refusals.items() if k in self._retry_after or k in self._in_flight
            }

    def _count_pending(self) -> None:
        pending = self.outbox.counts().pending
        with self._counts_lock:
            self._outbox_pending, self._pending_counted_at = pending, time.monotonic()

    def _publish_pending(self) -> None:
        # Door commands come first (pending() orders them so) and are never held back by the
        # cap: only events wait when many are already in flight.
        events_in_flight = sum(1 for f in self._in_flight.values() if f.message.kind is OutboxKind.EVENT)
        limit = (
            max(0, MAX_EVENTS_IN_FLIGHT - events_in_flight)
            + len(self._in_flight)
            + len(self._retry_after)
            + 50
        )
        pending = self.outbox.pending(limit=limit)
        if len(pending) == limit:
            self._dirty = True  # there may be more behind these
        for message in pending:
            if message.id in self._in_flight or self._retry_after.get(message.id, 0.0) > time.monotonic():
                continue
            self._retry_after.pop(message.id, None)
            # The time now, not the cycle's: reading the outbox may have waited (SQLite's write lock).
            now = utcnow()
            if message.is_expired(now):
                self._expiry_due = True  # the next cycle's sweep records it; never publish it
                continue
            if message.kind is OutboxKind.EVENT:
                if events_in_flight >= MAX_EVENTS_IN_FLIGHT:
                    self._dirty = True  # more to send once PUBACKs make room
                    return
                events_in_flight += 1
            if not self.client.connected:
                return
            self._in_flight[message.id] = _InFlight(message, self._publish(message, now))

    def _publish(self, message: OutboxMessage, now: datetime) -> Publication:
        properties = Properties(PacketTypes.PUBLISH)
        properties.PayloadFormatIndicator = 1
        properties.ContentType = "application/json"
        if message.kind is OutboxKind.DOOR_COMMAND and message.expires_at is not None:
            # MQTT 5 expiry is whole seconds counted from the broker's receipt: a coarse guard,
            # rounded down; the command's own expires_at is the exact one (the controller checks it).
            remaining = (message.expires_at - now).total_seconds()
            properties.MessageExpiryInterval = max(1, int(remaining))
            properties.ResponseTopic = self.topics.door_ack
            properties.CorrelationData = str(message.event_id).encode()
            self._acks.expect(message.event_id, time.monotonic())
        return self.client.publish(
            message.topic, message.payload, qos=message.qos, retain=False, properties=properties
        )

    def _settle_in_flight(self, *, stopped: bool = False) -> None:
        """Record what the broker made of each finished publish. A flight leaves ``_in_flight``
        only once its row is updated: until then it is neither published again nor expired.

        `stopped`: the client is stopped, so a publish still pending will never be answered; it
        is recorded like one whose connection died (it may have arrived).
        """
        sent: list[int] = []
        for message_id, flight in list(self._in_flight.items()):
            state = flight.publication.state
            if state is PublishState.PENDING and not stopped:
                continue
            if state is PublishState.SENT:
                sent.append(message_id)
                continue
            # Not acknowledged by the broker: the row stays pending and is retried (or expires).
            refused = state is PublishState.FAILED  # refused, not merely cut off: it reached nobody
            if flight.message.kind is OutboxKind.DOOR_COMMAND and flight.message.event_id is not None:
                if refused:
                    self._acks.forget(flight.message.event_id)
                else:  # it may have reached the door: an ack that still comes is recorded
                    self._acks.lose(flight.message.event_id)
            error = flight.publication.error or "the gate stopped before the broker acknowledged it"
            self.outbox.mark_failed(message_id, error, may_have_arrived=not refused)
            del self._in_flight[message_id]
            log.info(
                "gate %s: outbox message %d (%s) not delivered%s: %s",
                self.gate_id,
                message_id,
                flight.message.kind.value,
                "" if refused else " (it may have arrived)",
                error,
            )
            self._dirty = True
            if refused:  # back off before retrying
                refusals = self._refusals[message_id] = self._refusals.get(message_id, 0) + 1
                self._retry_after[message_id] = time.monotonic() + min(30.0, 0.5 * 2 ** min(refusals, 6))
        if sent:
            self.outbox.mark_sent(sent, utcnow())
            for message_id in sent:
                del self._in_flight[message_id]
                self._refusals.pop(message_id, None)

    def _record_ack(self, item: _AckReceived) -> None:
        ack = item.ack
        outcome = self._acks.resolve(ack.decision_id, ack.status, item.received_at)
        if outcome is None:
            log.info(
                "gate %s: ack %s for decision %s that nothing waits for (duplicate or earlier run)",
                self.gate_id,
                ack.status.value,
                ack.decision_id,
            )
            return
        if outcome.late:
            log.warning(
                "gate %s: late ack %s for %s after %.0f ms is recorded (it replaces no_ack, if set)",
                self.gate_id,
                ack.status.value,
                ack.decision_id,
                outcome.rtt_ms or 0.0,
            )
        if ack.reason in SUSPICIOUS_ACK_REASONS:
            log.warning(
                "gate %s: the door controller turned down decision %s: %s (check the command secret, the "
                "clocks and who else publishes to this gate's topics)",
                self.gate_id,
                ack.decision_id,
                ack.reason.value,
            )
        self._record_status(ack.decision_id, ack.status, ack.at, outcome.rtt_ms, ack.reason)

    def _record_status(
        self,
        decision_id: uuid.UUID,
        status: DoorStatus,
        at: datetime,
        rtt: float | None,
        reason: AckReason | None = None,
    ) -> None:
        try:
            event = self.store.set_door_status(decision_id, status, at, rtt, reason)
        except StoreError as exc:  # no such event (e.g. purged): nothing to retry
            log.warning("gate %s: cannot record door status %s: %s", self.gate_id, status.value, exc)
            return
        except SQLAlchemyError as exc:  # the database is unavailable: keep the outcome and retry
            self._database_down(exc)
            self._unrecorded.append((decision_id, status, at, rtt, reason))
            return
        except Exception:
            log.exception(
                "gate %s: door status %s for %s not recorded yet", self.gate_id, status.value, decision_id
            )
            self._unrecorded.append((decision_id, status, at, rtt, reason))
            return
        self._notify(event)

    def _retry_unrecorded(self) -> None:
        retry, self._unrecorded = self._unrecorded, []
        for outcome in retry:
            self._record_status(*outcome)

    def _notify(self, event: Event) -> None:
        if self._on_door_status is not None:
            try:
                self._on_door_status(event)
            except Exception:
                log.exception("gate %s: on_door_status callback failed", self.gate_id)

    def _recover_unacknowledged(self) -> None:
        """Commands a previous run sent and never heard back about wait for their ack again.

        Each is timed from when it was sent: those sent longer than the ack timeout ago become
        no_ack on the first cycle, the others get what is left of it (a restart can follow a
        command within a second or two); a late ack still replaces no_ack, as in one run.
        """
        try:
            sent = self.outbox.unacknowledged_commands()
        except SQLAlchemyError as exc:
            self._database_down(exc)
            return
        except Exception:
            log.exception("gate %s: cannot check for unacknowledged door commands", self.gate_id)
            return
        now, tick = utcnow(), time.monotonic()
        for decision_id, sent_at in sent:
            self._acks.expect(decision_id, tick - max(0.0, (now - sent_at).total_seconds()))
