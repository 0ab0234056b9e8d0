"""The reference door controller: what a real one should do with maskgate's door commands.

Run it with ``maskgate door-sim --gate ID``. It subscribes to ``<prefix>/<gate>/door/command``
and, for every message, in this order (docs/mqtt.md has the payloads):

1. **Size and schema.** Over 2 KiB, not UTF-8 JSON, a missing, unknown or mistyped field:
   rejected with a log line and *no ack* (nothing in it can be trusted, not even its id).
2. **Signature** (when ``mqtt.command_secret`` is set): unsigned or wrong -> ack ``refused``
   (``unsigned`` / ``bad_signature``). Its decision id is *not* remembered: otherwise anyone
   able to publish could block a real command by sending a forgery with its id first.
3. **Gate.** A command for another gate -> ``refused`` (``wrong_gate``).
4. **Replay.** A decision id seen before: the same bytes again (an MQTT QoS 1 redelivery or
   the gate's outbox retrying) get the original ack again and **no second action**; different
   bytes under a seen id -> ``refused`` (``replay``). Ids are remembered until their command
   could no longer be fresh, so the memory stays small.
5. **Freshness** against this controller's clock. Past ``expires_at`` -> ``expired``
   (``stale``), strictly: a late "open" is worse than a refused one, so no tolerance is
   added here. ``issued_at`` more than ``max_skew_s`` (default 0.5 s) in the future ->
   ``refused`` (``from_future``): the tolerance only keeps a controller whose clock is a
   little behind from refusing fresh commands. A lifetime over 60 s -> ``refused``
   (``ttl_too_long``). Keep gate and controller clocks on NTP: a controller clock that is
   d behind accepts commands up to d late; one that is d ahead refuses them d early.
6. **Act.** ``open`` drives the relay open for ``open_s`` seconds -> ``opened``; ``deny`` and
   ``warn`` keep the door shut (a real controller shows red / "fix your mask") ->
   ``refused`` (``denied`` / ``warned``).

The ack goes to the command's MQTT 5 response topic (only if it is this gate's ack topic; an
ACL should enforce that too) with the command's correlation data, QoS 1, signed like the
command when a secret is set. Nothing a message contains can crash the controller.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from maskgate.config import Config
from maskgate.core import AckReason, DoorStatus, utcnow
from maskgate.gate.comms.client import BrokerSettings, IncomingMessage, MqttClient
from maskgate.gate.comms.payloads import (
    MAX_TTL,
    DoorAck,
    DoorAction,
    DoorCommand,
    PayloadError,
    SignatureError,
    parse_door_command,
)
from maskgate.gate.comms.topics import Topics

log = logging.getLogger("maskgate.doorsim")

DEFAULT_OPEN_S = 3.0
DEFAULT_MAX_SKEW_S = 0.5
# A door held open longer than a minute is a door left open: nobody needs that long to walk
# through, and a typo ("300", "1e300") must never hold a relay open (past ~1e8 s the timer thread
# itself dies and the relay never closes).
MAX_OPEN_S = 60.0
# A clock more than a command's longest life (MAX_TTL) ahead is broken, not skewed: fix its NTP.
MAX_SKEW_S = MAX_TTL.total_seconds()
MAX_REMEMBERED = 10_000  # decision ids kept for replay checks (a door sees far fewer within a TTL)


class Relay:
    """A virtual door relay: open for a while, then closed again by a timer."""

    def __init__(self, name: str):
        self.name = name
        self.openings = 0
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    def open_for(self, seconds: float) -> None:
        """Open for `seconds` (0 to MAX_OPEN_S); anything else is refused before the relay moves."""
        check_open_s(seconds)
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()  # a second "open" while open extends the opening
            self._open = True
            self.openings += 1
            log.info("%s: relay OPEN for %.1f s", self.name, seconds)
            self._timer = threading.Timer(seconds, self.close)
            self._timer.daemon = True
            self._timer.start()

    def close(self) -> None:
        with self._lock:
            if self._open:
                log.info("%s: relay closed", self.name)
            self._open = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


def check_open_s(seconds: float) -> None:
    """Raise ValueError unless `seconds` is a relay opening time from 0 to MAX_OPEN_S."""
    if not 0 <= seconds <= MAX_OPEN_S:  # also false for NaN
        raise ValueError(f"a relay opens for 0 to {MAX_OPEN_S:g} s, not {seconds!r}")


def check_max_skew_s(seconds: float) -> None:
    """Raise ValueError unless `seconds` is a clock skew tolerance from 0 to MAX_SKEW_S."""
    if not 0 <= seconds <= MAX_SKEW_S:  # also false for NaN
        raise ValueError(f"the clock skew tolerance is 0 to {MAX_SKEW_S:g} s, not {seconds!r}")


@dataclass(frozen=True, slots=True)
class Opening:
    """A door opening, for audits (and tests: was any door opened after its command expired?)."""

    decision_id: object
    opened_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class _Seen:
    digest: bytes
    ack: DoorAck
    forget_at: datetime


class DoorSimulator:
    """Validates door commands for one gate, drives a virtual relay, acks. See the module doc."""

    def __init__(
        self,
        config: Config,
        gate_id: str,
        *,
        open_s: float = DEFAULT_OPEN_S,
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
        clock: Callable[[], datetime] = utcnow,
        reconnect_max_s: float = 5.0,
    ):
        check_open_s(open_s)  # here, not at the first "open": a controller must not start misconfigured
        check_max_skew_s(max_skew_s)
        self.topics = Topics(config.mqtt.topic_prefix, gate_id)
        self.gate_id = gate_id
        self.name = f"door {gate_id}"
        self.open_s = open_s
        self.skew = timedelta(seconds=max_skew_s)
        self.clock = clock
        self._secret = config.mqtt.command_secret
        self.relay = Relay(self.name)
        self.outcomes: Counter[str] = Counter()  # opened / refused / expired / rejected / duplicate
        self.openings: deque[Opening] = deque(maxlen=1000)
        self.received: deque[object] = deque(maxlen=MAX_REMEMBERED)  # ids of well-formed commands
        self._seen: OrderedDict[object, _Seen] = OrderedDict()
        self._lock = threading.Lock()  # paho delivers on one thread, but tests call handle() directly
        self.client = MqttClient(
            BrokerSettings.from_config(config.mqtt),
            f"maskgate-door-{gate_id}",
            reconnect_max_s=reconnect_max_s,
        )
        self.client.subscribe(self.topics.door_command, self._on_command)

    def start(self) -> None:
        self.client.start()

    def stop(self) -> None:
        self.client.stop()
        self.relay.close()

    # -- the decision, without MQTT (tests call this directly) ------------------------------------

    def handle(self, message: IncomingMessage) -> DoorAck | None:
        """What to do with one command message: the ack to send, or None to drop it."""
        with self._lock:
            try:
                return self._handle(message)
            except Exception:  # a controller must keep running whatever arrives
                log.exception("%s: unexpected error on a command; dropped", self.name)
                self.outcomes["rejected"] += 1
                return None

    def _handle(self, message: IncomingMessage) -> DoorAck | None:
        now = self.clock()
        try:
            command = parse_door_command(message.payload, self._secret)
        except SignatureError as exc:
            reason = AckReason.UNSIGNED if exc.unsigned else AckReason.BAD_SIGNATURE
            return self._refuse(exc.message, reason, now, str(exc))
        except PayloadError as exc:
            log.warning("%s: REJECTED message on %s: %s", self.name, message.topic, exc)
            self.outcomes["rejected"] += 1
            return None
        self.received.append(command.decision_id)
        if command.gate_id != self.gate_id:
            return self._refuse(
                command, AckReason.WRONG_GATE, now, f"command is for gate {command.gate_id!r}"
            )
        digest = hashlib.sha256(message.payload).digest()
        self._forget_old(now)
        seen = self._seen.get(command.decision_id)
        if seen is not None:
            if seen.digest == digest:
                log.info(
                    "%s: duplicate of decision %s: not acted on again, ack %s repeated",
                    self.name,
                    command.decision_id,
                    seen.ack.status.value,
                )
                self.outcomes["duplicate"] += 1
                return seen.ack
            return self._refuse(command, AckReason.REPLAY, now, "decision id seen before with other content")
        ack = self._check_and_act(command, now)
        self._seen[command.decision_id] = _Seen(digest, ack, max(command.expires_at, now) + self.skew)
        return ack

    def _check_and_act(self, command: DoorCommand, now: datetime) -> DoorAck:
        if now > command.expires_at:
            late_ms = (now - command.expires_at).total_seconds() * 1000
            log.warning(
                "%s: EXPIRED decision %s: %.0f ms past expires_at; door stays shut",
                self.name,
                command.decision_id,
                late_ms,
            )
            self.outcomes["expired"] += 1
            return self._ack(command, DoorStatus.EXPIRED, AckReason.STALE, now)
        if command.issued_at > now + self.skew:
            return self._refuse(command, AckReason.FROM_FUTURE, now, "issued_at is ahead of this clock")
        if command.expires_at - command.issued_at > MAX_TTL:
            return self._refuse(command, AckReason.TTL_TOO_LONG, now, f"valid for more than {MAX_TTL}")
        if command.action is DoorAction.OPEN:
            self.relay.open_for(self.open_s)
            self.openings.append(Opening(command.decision_id, now, command.expires_at))
            left_ms = (command.expires_at - now).total_seconds() * 1000
            log.info(
                "%s: OPENED for decision %s (%s %.2f, track %d, %.0f ms before expiry)",
                self.name,
                command.decision_id,
                command.label.value,
                command.confidence,
                command.track_id,
                left_ms,
            )
            self.outcomes["opened"] += 1
            return self._ack(command, DoorStatus.OPENED, AckReason.OPENED, now)
        reason = AckReason.DENIED if command.action is DoorAction.DENY else AckReason.WARNED
        log.info(
            "%s: door stays shut: %s decision %s (%s %.2f, track %d)",
            self.name,
            command.action.value.upper(),
            command.decision_id,
            command.label.value,
            command.confidence,
            command.track_id,
        )
        self.outcomes["refused"] += 1
        return self._ack(command, DoorStatus.REFUSED, reason, now)

    def _refuse(self, command: DoorCommand, reason: AckReason, now: datetime, why: str) -> DoorAck:
        log.warning("%s: REFUSED decision %s (%s): %s", self.name, command.decision_id, reason.value, why)
        self.outcomes["refused"] += 1
        return self._ack(command, DoorStatus.REFUSED, reason, now)

    def _ack(self, command: DoorCommand, status: DoorStatus, reason: AckReason, now: datetime) -> DoorAck:
        return DoorAck(command.decision_id, self.gate_id, status, now, reason)

    def _forget_old(self, now: datetime) -> None:
        # A forgotten id can only come back stale (it is remembered until it could not be fresh).
        while self._seen and (
            len(self._seen) > MAX_REMEMBERED or next(iter(self._seen.values())).forget_at < now
        ):
            self._seen.popitem(last=False)

    # -- MQTT ----------------------------------------------------------------------------------------

    def _on_command(self, message: IncomingMessage) -> None:
        ack = self.handle(message)
        if ack is None:
            return
        topic = self.topics.door_ack
        if message.response_topic not in (None, topic):
            log.warning(
                "%s: ignoring response topic %r; acking on %s", self.name, message.response_topic, topic
            )
        correlation = message.correlation_data or str(ack.decision_id).encode()
        self.client.publish(topic, ack.encode(self._secret), qos=1, properties=_ack_properties(correlation))


def _ack_properties(correlation: bytes) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    properties.CorrelationData = correlation
    properties.PayloadFormatIndicator = 1
    properties.ContentType = "application/json"
    return properties


def run_door_sim(config: Config, gate_id: str, open_s: float, max_skew_s: float) -> int:
    """`maskgate door-sim`: run until SIGINT or SIGTERM."""
    door = DoorSimulator(config, gate_id, open_s=open_s, max_skew_s=max_skew_s)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    signing = "signed commands required" if config.mqtt.command_secret else "signatures off"
    print(
        f"door-sim {gate_id}: listening on {door.topics.door_command} at {door.client.settings.describe()} "
        f"({signing}, relay opens {open_s:g} s, clock skew tolerance {max_skew_s:g} s)",
        flush=True,
    )
    door.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        door.stop()
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(door.outcomes.items())) or "no commands"
    print(f"door-sim {gate_id}: stopped ({counts})", flush=True)
    return 0
