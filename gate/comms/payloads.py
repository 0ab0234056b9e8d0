"""The MQTT payloads (DESIGN.md, "MQTT contract"): typed builders and strict parsers.

Builders produce JSON from plain ``str``/``int``/``float``/``bool`` only: numpy scalars
from the classifier are converted here, because ``json`` (and paho) cannot encode them.

Parsers accept exactly the contract and raise :class:`PayloadError` for anything else,
with a reason fit for a log line: over the size limit, not UTF-8, not JSON, duplicate or
unknown keys, a missing field, a wrong type, a value out of range, NaN. Nothing a broker
delivers can make a parser raise anything but :class:`PayloadError`; the hypothesis tests
in ``tests/gate/comms`` hold them to that. Every JSON payload carries ``"v": 1``.

Times are ISO 8601 UTC with milliseconds and ``Z`` (``2026-05-01T12:00:00.125Z``).
"""

from __future__ import annotations

import enum
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from maskgate.const import GATE_ID_PATTERN, MAX_DOOR_COMMAND_TTL_S, MODEL_VERSION_PATTERN
from maskgate.core import AckReason, Action, Decision, DoorStatus, Event, Label, utcnow
from maskgate.gate.comms import signing

SCHEMA_VERSION = 1

# Size limits per topic: a door command is ~400 bytes; anything far larger is not ours.
MAX_COMMAND_BYTES = 2048
MAX_ACK_BYTES = 1024
MAX_STATE_BYTES = 4096
MAX_MODEL_BYTES = 4096
MAX_STATUS_BYTES = 16  # plain-text availability and Home Assistant status

MAX_TTL = timedelta(seconds=MAX_DOOR_COMMAND_TTL_S)  # a command claiming a longer life is refused
CONFIDENCE_DECIMALS = 4  # so its canonical text is the same in every language (docs/mqtt.md)

_SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
_REASON_PATTERN = re.compile(r"[a-z_]{1,32}")
_SIGNATURE_PATTERN = re.compile(r"[0-9a-f]{64}")
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)


class PayloadError(ValueError):
    """A message that does not follow the contract; the text says why."""


class SignatureError(PayloadError):
    """A well-formed door command or ack whose signature is missing or wrong.

    `message` is the parsed but untrusted message, so that a controller can still refuse it
    by its decision id.
    """

    def __init__(self, reason: str, message: Any, unsigned: bool):
        super().__init__(reason)
        self.message = message
        self.unsigned = unsigned  # no signature at all (rather than a wrong one)


class DoorAction(enum.StrEnum):
    """What a door command asks the controller to do."""

    OPEN = "open"
    DENY = "deny"  # stay shut, signal "no entry"
    WARN = "warn"  # stay shut, tell the person to fix the mask


DOOR_ACTIONS: Mapping[Action, DoorAction] = {
    Action.ALLOW: DoorAction.OPEN,
    Action.DENY: DoorAction.DENY,
    Action.WARN: DoorAction.WARN,
}

ACK_STATUSES = frozenset({DoorStatus.OPENED, DoorStatus.REFUSED, DoorStatus.EXPIRED})  # no_ack is ours


# -- time and JSON helpers -----------------------------------------------------------------------


def truncate_ms(when: datetime) -> datetime:
    """`when` in UTC, cut to whole milliseconds (what the wire carries)."""
    when = when.astimezone(UTC)
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


def format_time(when: datetime) -> str:
    return truncate_ms(when).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_json_bytes(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def decode_object(raw: Any, limit: int, what: str) -> dict[str, Any]:
    """The JSON object in `raw` (bytes), or :class:`PayloadError`."""
    text = decode_text(raw, limit, what)
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"{what}: not valid JSON ({_short(exc)})") from None
    if not isinstance(value, dict):
        raise PayloadError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def decode_text(raw: Any, limit: int, what: str) -> str:
    if not isinstance(raw, bytes | bytearray):
        raise PayloadError(f"{what}: payload is {type(raw).__name__}, not bytes")
    if len(raw) > limit:
        raise PayloadError(f"{what}: {len(raw)} bytes is over the {limit}-byte limit")
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError(f"{what}: not UTF-8") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A duplicate key could make a signer and a verifier see different values.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _short(exc: BaseException) -> str:
    return str(exc)[:120] or type(exc).__name__


class _Reader:
    """Typed access to one decoded JSON object; every failure is a PayloadError naming the field."""

    def __init__(
        self, data: dict[str, Any], what: str, required: set[str], optional: frozenset[str] = frozenset()
    ):
        self.data, self.what = data, what
        missing = sorted(required - data.keys())
        if missing:
            raise PayloadError(f"{what}: missing {', '.join(missing)}")
        unknown = sorted(data.keys() - required - optional)
        if unknown:
            shown = ", ".join(repr(key[:40]) for key in unknown[:5])
            raise PayloadError(f"{what}: unknown field(s) {shown}")
        if data.get("v", SCHEMA_VERSION) != SCHEMA_VERSION or isinstance(data.get("v"), bool):
            raise PayloadError(f"{what}: unsupported schema version {str(data.get('v'))[:20]!r}")

    def fail(self, key: str, expected: str) -> PayloadError:
        shown = repr(self.data.get(key))[:60]
        return PayloadError(f"{self.what}: {key} must be {expected}, got {shown}")

    def text(self, key: str, pattern: re.Pattern[str] | None = None, max_len: int = 256) -> str:
        value = self.data.get(key)
        if not isinstance(value, str) or not 0 < len(value) <= max_len:
            raise self.fail(key, f"a string of 1-{max_len} characters")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(key, f"a string matching {pattern.pattern}")
        return value

    def optional_text(self, key: str, pattern: re.Pattern[str]) -> str | None:
        # Absent, not null: a null would be a field the sender meant to fill and did not.
        return self.text(key, pattern) if key in self.data else None

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"an integer from {low} to {high}")
        return value

    def number(self, key: str, low: float, high: float) -> float:
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise self.fail(key, f"a number from {low} to {high}")
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self.data.get(key)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def uuid(self, key: str) -> uuid.UUID:
        value = self.data.get(key)
        try:
            if not isinstance(value, str) or len(value) != 36:
                raise ValueError
            return uuid.UUID(value)
        except ValueError:
            raise self.fail(key, "a UUID like 12345678-1234-1234-1234-123456789abc") from None

    def time(self, key: str) -> datetime:
        value = self.data.get(key)
        try:
            if not isinstance(value, str) or len(value) > 40:
                raise ValueError
            parsed = datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                raise ValueError
            parsed = parsed.astimezone(UTC)
            if not _EARLIEST <= parsed <= _LATEST:  # keeps later arithmetic (+ skew) from overflowing
                raise ValueError
            return parsed
        except (ValueError, OverflowError):
            raise self.fail(key, "an ISO 8601 time with a zone, e.g. 2026-05-01T12:00:00.125Z") from None

    def choice(self, key: str, kind: type[enum.StrEnum], allowed: frozenset[Any] | None = None) -> Any:
        value = self.data.get(key)
        options = allowed if allowed is not None else frozenset(kind)
        if not isinstance(value, str) or value not in {option.value for option in options}:
            raise self.fail(key, "one of " + ", ".join(sorted(option.value for option in options)))
        return kind(value)


# -- door command -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DoorCommand:
    """``<prefix>/<gate>/door/command``: QoS 1, never retained, MQTT 5 expiry, ack requested."""

    decision_id: uuid.UUID
    gate_id: str
    action: DoorAction
    label: Label
    confidence: float
    track_id: int
    issued_at: datetime
    expires_at: datetime
    model: str
    signature: str | None = None

    @classmethod
    def from_decision(cls, decision: Decision, ttl_s: float) -> DoorCommand:
        """The command for `decision`, valid for `ttl_s` from the moment the decision was made."""
        issued_at = truncate_ms(decision.decided_at)
        return cls(
            decision_id=decision.decision_id,
            gate_id=decision.gate_id,
            action=DOOR_ACTIONS[decision.action],
            label=decision.label,
            confidence=round(float(decision.confidence), CONFIDENCE_DECIMALS),
            track_id=int(decision.track_id),
            issued_at=issued_at,
            expires_at=truncate_ms(issued_at + timedelta(seconds=ttl_s)),
            model=decision.model_version,
        )

    def to_payload(self, secret: str = "") -> dict[str, Any]:
        payload = {
            "v": SCHEMA_VERSION,
            "decision_id": str(self.decision_id),
            "gate_id": self.gate_id,
            "action": self.action.value,
            "label": self.label.value,
            "confidence": self.confidence,
            "track_id": self.track_id,
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
            "model": self.model,
        }
        return signing.sign(payload, secret) if secret else payload

    def encode(self, secret: str = "") -> bytes:
        return to_json_bytes(self.to_payload(secret))


def parse_door_command(raw: Any, secret: str = "") -> DoorCommand:
    """A door command from `raw`; with a `secret`, a missing or wrong ``sig`` raises SignatureError."""
    data = decode_object(raw, MAX_COMMAND_BYTES, "door command")
    fields = {"v", "decision_id", "gate_id", "action", "label", "confidence", "track_id"}
    fields |= {"issued_at", "expires_at", "model"}
    read = _Reader(data, "door command", fields, frozenset({signing.SIGNATURE_FIELD}))
    command = DoorCommand(
        decision_id=read.uuid("decision_id"),
        gate_id=read.text("gate_id", GATE_ID_PATTERN),
        action=read.choice("action", DoorAction),
        label=read.choice("label", Label),
        confidence=read.number("confidence", 0.0, 1.0),
        track_id=read.integer("track_id", 0, 2**31 - 1),
        issued_at=read.time("issued_at"),
        expires_at=read.time("expires_at"),
        model=read.text("model", MODEL_VERSION_PATTERN),
        signature=read.optional_text(signing.SIGNATURE_FIELD, _SIGNATURE_PATTERN),
    )
    if command.expires_at <= command.issued_at:
        raise PayloadError("door command: expires_at must be after issued_at")
    _check_signature(data, secret, command, "door command")
    return command


def _check_signature(data: dict[str, Any], secret: str, message: Any, what: str) -> None:
    if not secret:
        return  # signing is off for this gate
    if signing.SIGNATURE_FIELD not in data:
        raise SignatureError(f"{what}: unsigned, but this gate requires signatures", message, unsigned=True)
    if not signing.verify(data, secret):
        raise SignatureError(f"{what}: bad signature", message, unsigned=False)


# -- door ack ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DoorAck:
    """``<prefix>/<gate>/door/ack`` (or the command's response topic), from the controller."""

    decision_id: uuid.UUID
    gate_id: str
    status: DoorStatus
    at: datetime
    reason: AckReason | None = None

    def to_payload(self, secret: str = "") -> dict[str, Any]:
        payload: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "decision_id": str(self.decision_id),
            "gate_id": self.gate_id,
            "status": self.status.value,
            "at": format_time(self.at),
        }
        if self.reason is not None:
            payload["reason"] = self.reason.value
        return signing.sign(payload, secret) if secret else payload

    def encode(self, secret: str = "") -> bytes:
        return to_json_bytes(self.to_payload(secret))


def parse_door_ack(raw: Any, secret: str = "") -> DoorAck:
    data = decode_object(raw, MAX_ACK_BYTES, "door ack")
    optional = frozenset({"reason", signing.SIGNATURE_FIELD})
    read = _Reader(data, "door ack", {"v", "decision_id", "gate_id", "status", "at"}, optional)
    reason = read.optional_text("reason", _REASON_PATTERN)
    ack = DoorAck(
        decision_id=read.uuid("decision_id"),
        gate_id=read.text("gate_id", GATE_ID_PATTERN),
        status=read.choice("status", DoorStatus, ACK_STATUSES),
        at=read.time("at"),
        reason=read.choice("reason", AckReason) if reason is not None else None,
    )
    read.optional_text(signing.SIGNATURE_FIELD, _SIGNATURE_PATTERN)
    _check_signature(data, secret, ack, "door ack")
    return ack


# -- gate state --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateState:
    """``<prefix>/<gate>/state`` (retained): what the gate says about itself."""

    gate_id: str
    camera_ok: bool
    fps: float
    model_version: str
    decisions: int = 0
    allowed: int = 0
    denied: int = 0
    warned: int = 0
    outbox_pending: int = 0
    at: datetime = field(default_factory=utcnow)

    @property
    def compliance(self) -> float | None:
        """The share of decisions that let a person in (masked properly), or None before the first."""
        return self.allowed / self.decisions if self.decisions else None

    def to_payload(self) -> dict[str, Any]:
        compliance = self.compliance
        return {
            "v": SCHEMA_VERSION,
            "gate_id": self.gate_id,
            "at": format_time(self.at),
            "camera_ok": bool(self.camera_ok),
            "fps": round(float(self.fps), 2),
            "model_version": self.model_version,
            "counters": {
                "decisions": int(self.decisions),
                "allow": int(self.allowed),
                "deny": int(self.denied),
                "warn": int(self.warned),
            },
            "compliance": None if compliance is None else round(compliance, 4),
            "outbox_pending": int(self.outbox_pending),
        }

    def encode(self) -> bytes:
        return to_json_bytes(self.to_payload())


def parse_gate_state(raw: Any) -> GateState:
    data = decode_object(raw, MAX_STATE_BYTES, "gate state")
    required = {"v", "gate_id", "at", "camera_ok", "fps", "model_version", "counters", "compliance"}
    read = _Reader(data, "gate state", required, frozenset({"outbox_pending"}))
    counters_data = data["counters"]
    if not isinstance(counters_data, dict):
        raise read.fail("counters", "an object")
    counters = _Reader(counters_data, "gate state counters", {"decisions", "allow", "deny", "warn"})
    big = 2**53
    state = GateState(
        gate_id=read.text("gate_id", GATE_ID_PATTERN),
        camera_ok=read.boolean("camera_ok"),
        fps=read.number("fps", 0.0, 10_000.0),
        model_version=read.text("model_version", MODEL_VERSION_PATTERN),
        decisions=counters.integer("decisions", 0, big),
        allowed=counters.integer("allow", 0, big),
        denied=counters.integer("deny", 0, big),
        warned=counters.integer("warn", 0, big),
        outbox_pending=read.integer("outbox_pending", 0, big) if "outbox_pending" in data else 0,
        at=read.time("at"),
    )
    if data["compliance"] is not None:
        read.number("compliance", 0.0, 1.0)
    return state


# -- active model -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActiveModel:
    """``<prefix>/models/active`` (retained): the model every gate should run."""

    version: str
    sha256: str  # of model.tflite: the agent checks it before loading
    card_sha256: str  # of card.json, which lists every file's sha256: labels and crop spec included
    location: str  # where to load the model folder from: a path or a URL
    published_at: datetime = field(default_factory=utcnow)

    def to_payload(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "version": self.version,
            "sha256": self.sha256,
            "card_sha256": self.card_sha256,
            "location": self.location,
            "published_at": format_time(self.published_at),
        }

    def encode(self) -> bytes:
        return to_json_bytes(self.to_payload())


def parse_active_model(raw: Any) -> ActiveModel:
    data = decode_object(raw, MAX_MODEL_BYTES, "active model")
    fields = {"v", "version", "sha256", "card_sha256", "location", "published_at"}
    read = _Reader(data, "active model", fields)
    location = read.text("location", max_len=1024)
    if any(ord(ch) < 32 for ch in location):
        raise read.fail("location", "a path or URL without control characters")
    return ActiveModel(
        version=read.text("version", MODEL_VERSION_PATTERN),
        sha256=read.text("sha256", _SHA256_PATTERN),
        card_sha256=read.text("card_sha256", _SHA256_PATTERN),
        location=location,
        published_at=read.time("published_at"),
    )


# -- events and plain-text topics ------------------------------------------------------------------


def event_payload(event: Event) -> dict[str, Any]:
    """``<prefix>/<gate>/events``: the stored event's fields (``Event.to_json``) under the rules of
    every payload here: ``"v"`` first, times in UTC with milliseconds and ``Z``."""
    payload = {"v": SCHEMA_VERSION, **event.to_json(), "occurred_at": format_time(event.occurred_at)}
    payload["door_at"] = None if event.door_at is None else format_time(event.door_at)
    return payload


def encode_event(event: Event) -> bytes:
    """The event message (:func:`event_payload`); subscribers dedupe on event_id."""
    payload = event_payload(event)
    _require_finite(payload)
    return to_json_bytes(payload)


def _require_finite(payload: Mapping[str, Any]) -> None:
    for key, value in payload.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"event field {key} is {value}: JSON has no NaN or infinity")


AVAILABILITY_VALUES = frozenset({"online", "offline", "stopped"})
HA_STATUS_VALUES = frozenset({"online", "offline"})


def parse_availability(raw: Any) -> str:
    """``<prefix>/<gate>/availability``: ``online``, ``stopped`` or ``offline``."""
    return _parse_word(raw, AVAILABILITY_VALUES, "availability")


def parse_ha_status(raw: Any) -> str:
    """``homeassistant/status``: Home Assistant's birth (``online``) and will (``offline``)."""
    return _parse_word(raw, HA_STATUS_VALUES, "homeassistant status")


def _parse_word(raw: Any, allowed: frozenset[str], what: str) -> str:
    text = decode_text(raw, MAX_STATUS_BYTES, what)
    if text not in allowed:
        raise PayloadError(f"{what}: expected one of {', '.join(sorted(allowed))}, got {text[:20]!r}")
    return text
