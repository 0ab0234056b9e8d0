"""MQTT topic names (DESIGN.md, "MQTT contract"); the one place they are spelled out.

Gate ids are restricted to letters, digits, ``-`` and ``_``: they become topic levels and
broker user names, so a ``/``, ``+`` or ``#`` would let one gate's id reach another gate's
topics, and the door controller's broker user ``door.<gate>`` (see ``deploy/mosquitto``)
can never collide with a gate id.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskgate.const import GATE_ID_PATTERN, TOPIC_PREFIX_PATTERN

HOMEASSISTANT_PREFIX = "homeassistant"
HOMEASSISTANT_STATUS = f"{HOMEASSISTANT_PREFIX}/status"  # Home Assistant's birth and will messages


class TopicError(ValueError):
    """A gate id or topic prefix that cannot be used in topics."""


def check_gate_id(gate_id: str) -> str:
    if not GATE_ID_PATTERN.fullmatch(gate_id):
        raise TopicError(f"gate id {gate_id!r} must be 1-64 letters, digits, '-' or '_'")
    return gate_id


def check_prefix(prefix: str) -> str:
    if not TOPIC_PREFIX_PATTERN.fullmatch(prefix):
        raise TopicError(f"topic prefix {prefix!r} must be 1-4 levels of letters, digits, '-' or '_'")
    return prefix


@dataclass(frozen=True, slots=True)
class Topics:
    """One gate's topics under a prefix (default ``maskgate``)."""

    prefix: str
    gate_id: str

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        check_gate_id(self.gate_id)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.gate_id}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"  # retained: online / stopped / offline (Last Will)

    @property
    def state(self) -> str:
        return f"{self.base}/state"  # retained JSON

    @property
    def door_command(self) -> str:
        return f"{self.base}/door/command"  # never retained: a retained "open" is an unlocked door

    @property
    def door_ack(self) -> str:
        return f"{self.base}/door/ack"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def models_active(self) -> str:
        return models_active_topic(self.prefix)


def models_active_topic(prefix: str) -> str:
    """The retained announcement of the model every gate should run."""
    return f"{check_prefix(prefix)}/models/active"


def all_gates(prefix: str, leaf: str) -> str:
    """A subscription filter for one kind of topic on every gate, e.g. ``maskgate/+/events``."""
    return f"{check_prefix(prefix)}/+/{leaf}"
