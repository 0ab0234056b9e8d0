"""The shared domain types: labels, actions, boxes, frames, faces, tracks, decisions, events.

Every part of maskgate (agent, MQTT link, store, dashboard, training) passes these
objects rather than dicts. They are small, typed and immutable so that a stage can
hand them on without defensive copies.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np


class UnknownLabelError(ValueError):
    """A class name that is neither a canonical label nor one of its aliases."""


class Label(enum.StrEnum):
    """What the classifier says about a face. The order is the model's output order."""

    WITH_MASK = "with_mask"
    WITHOUT_MASK = "without_mask"
    IMPROPER_MASK = "improper_mask"

    @classmethod
    def parse(cls, name: str) -> Label:
        """Return the canonical label for `name`, accepting the dataset aliases in any case."""
        key = name.strip().lower().replace("-", "_").replace(" ", "_")
        try:
            return _LABEL_ALIASES[key]
        except KeyError:
            known = ", ".join(sorted(_LABEL_ALIASES))
            raise UnknownLabelError(f"unknown label {name!r} (known: {known})") from None


# Aliases found in public face-mask datasets (DESIGN.md, "Labels and decisions").
_LABEL_ALIASES: dict[str, Label] = {
    **{label.value: label for label in Label},
    "mask": Label.WITH_MASK,
    "no_mask": Label.WITHOUT_MASK,
    "nomask": Label.WITHOUT_MASK,
    "mask_weared_incorrect": Label.IMPROPER_MASK,
    "with_incorrect_mask": Label.IMPROPER_MASK,
    "incorrect_mask": Label.IMPROPER_MASK,
    "with_improper_mask": Label.IMPROPER_MASK,
}

LABELS: tuple[Label, ...] = tuple(Label)


class Action(enum.StrEnum):
    """What the gate does about a person."""

    ALLOW = "allow"
    DENY = "deny"
    WARN = "warn"


# Default policy (configurable per gate): with mask opens, without is refused,
# improperly worn keeps the door shut and tells the person to fix the mask.
DEFAULT_ACTIONS: Mapping[Label, Action] = {
    Label.WITH_MASK: Action.ALLOW,
    Label.WITHOUT_MASK: Action.DENY,
    Label.IMPROPER_MASK: Action.WARN,
}


class DoorStatus(enum.StrEnum):
    """What became of a door command. The first three come from the controller's ack; the gate
    records ``expired`` itself for a command it never published before it expired."""

    OPENED = "opened"
    REFUSED = "refused"
    EXPIRED = "expired"
    # No ack arrived within the timeout; or the command expired after a publish that may have
    # reached the door (cut off before the broker's PUBACK): the door's answer is unknown.
    NO_ACK = "no_ack"


class AckReason(enum.StrEnum):
    """Why a door controller acked as it did (the ack's optional ``reason``)."""

    OPENED = "opened"
    DENIED = "denied"
    WARNED = "warned"
    STALE = "stale"  # expires_at passed (beyond the clock skew tolerance)
    FROM_FUTURE = "from_future"  # issued_at ahead of the controller's clock beyond the tolerance
    TTL_TOO_LONG = "ttl_too_long"
    BAD_SIGNATURE = "bad_signature"
    UNSIGNED = "unsigned"
    REPLAY = "replay"  # a decision id seen before, with a different payload
    WRONG_GATE = "wrong_gate"


# Door outcomes that need a person to look at the event.
INCIDENT_DOOR_STATUSES = frozenset({DoorStatus.REFUSED, DoorStatus.EXPIRED, DoorStatus.NO_ACK})


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the only kind of datetime maskgate stores)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box in pixels, (x1, y1) top-left inclusive, (x2, y2) bottom-right exclusive."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return max(0.0, self.x2 - self.x1)

    @property
    def height(self) -> float:
        return max(0.0, self.y2 - self.y1)

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def side(self) -> float:
        """The longer side: the face size used for size bands and weighting."""
        return max(self.width, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x1 + self.x2) / 2, (self.y1 + self.y2) / 2)

    def clip(self, width: int, height: int) -> Box:
        """This box cut to an image of `width` x `height` (may become empty)."""
        return Box(
            min(max(self.x1, 0.0), width),
            min(max(self.y1, 0.0), height),
            min(max(self.x2, 0.0), width),
            min(max(self.y2, 0.0), height),
        )

    def intersection(self, other: Box) -> float:
        """The area both boxes cover."""
        return Box(
            max(self.x1, other.x1), max(self.y1, other.y1), min(self.x2, other.x2), min(self.y2, other.y2)
        ).area

    def iou(self, other: Box) -> float:
        """Intersection over union; 0 for disjoint or empty boxes."""
        inter = self.intersection(other)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def overlap_of_smaller(self, other: Box) -> float:
        """Intersection over the smaller box's area: 1 when one box lies inside the other."""
        smaller = min(self.area, other.area)
        return self.intersection(other) / smaller if smaller > 0 else 0.0


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One camera image: RGB uint8 (H, W, 3), its sequence number and monotonic capture time."""

    image: np.ndarray
    seq: int
    timestamp: float  # time.monotonic() at capture, for latencies
    captured_at: datetime = field(default_factory=utcnow)  # wall clock, for records

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True, slots=True)
class Face:
    """A detected face: its box, the detector's score and landmarks (name -> (x, y)) when known.

    `box` says where the face is (tracking, face size, matching against drawn boxes); `crop_box`,
    when set, is where the classifier's crop is cut instead: a detector that locates a face with
    one set of nets but must crop it as the classifier was trained sets both.
    """

    box: Box
    score: float
    landmarks: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    crop_box: Box | None = None

    @property
    def box_to_crop(self) -> Box:
        """The box the classifier's crop of this face is cut around."""
        return self.box if self.crop_box is None else self.crop_box


@dataclass(frozen=True, slots=True)
class Classification:
    """The classifier's probabilities for one face, in canonical label order."""

    probabilities: Mapping[Label, float]

    @classmethod
    def from_vector(cls, vector: Any, labels: tuple[Label, ...] = LABELS) -> Classification:
        return cls({label: float(p) for label, p in zip(labels, vector, strict=True)})

    @property
    def label(self) -> Label:
        return max(self.probabilities, key=self.probabilities.__getitem__)

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]


@dataclass(frozen=True, slots=True)
class Track:
    """A person followed across frames: a stable id, the latest face and how often it was seen."""

    track_id: int
    face: Face
    hits: int
    first_seen: float  # monotonic time of the first sighting
    last_seen: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The gate's verdict on one tracked person; at most one per stable verdict."""

    gate_id: str
    track_id: int
    action: Action
    label: Label
    confidence: float
    probabilities: Mapping[Label, float]
    model_version: str
    latency_ms: float  # first sighting of the track to this decision
    decided_at: datetime = field(default_factory=utcnow)
    decision_id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True, slots=True)
class Review:
    """A person's verdict on an event: reviewed, false positive and/or the true label."""

    reviewed_by: str
    reviewed_at: datetime
    true_label: Label | None = None
    false_positive: bool = False
    note: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    """What the store records and the events topic carries: one decision and what became of it."""

    event_id: uuid.UUID
    gate_id: str
    track_id: int
    occurred_at: datetime
    label: Label
    action: Action
    confidence: float
    probabilities: Mapping[Label, float]
    model_version: str
    latency_ms: float
    door_status: DoorStatus | None = None
    door_at: datetime | None = None
    door_rtt_ms: float | None = None
    door_reason: AckReason | None = None  # the controller's reason, when its ack gave one
    snapshot_path: str | None = None
    review: Review | None = None
    pinned: bool = False

    @classmethod
    def from_decision(cls, decision: Decision, snapshot_path: str | None = None) -> Event:
        return cls(
            event_id=decision.decision_id,
            gate_id=decision.gate_id,
            track_id=decision.track_id,
            occurred_at=decision.decided_at,
            label=decision.label,
            action=decision.action,
            confidence=decision.confidence,
            probabilities=dict(decision.probabilities),
            model_version=decision.model_version,
            latency_ms=decision.latency_ms,
            snapshot_path=snapshot_path,
        )

    @property
    def is_incident(self) -> bool:
        """Needs a person's eyes: a refused or warned person, or a door command that went wrong."""
        return self.action is not Action.ALLOW or self.door_status in INCIDENT_DOOR_STATUSES

    def with_door(
        self, status: DoorStatus, at: datetime, rtt_ms: float | None = None, reason: AckReason | None = None
    ) -> Event:
        return replace(self, door_status=status, door_at=at, door_rtt_ms=rtt_ms, door_reason=reason)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (plain floats and strings only: paho cannot encode numpy types)."""
        review = self.review
        return {
            "event_id": str(self.event_id),
            "gate_id": self.gate_id,
            "track_id": int(self.track_id),
            "occurred_at": self.occurred_at.isoformat(),
            "label": self.label.value,
            "action": self.action.value,
            "confidence": float(self.confidence),
            "probabilities": {label.value: float(p) for label, p in self.probabilities.items()},
            "model_version": self.model_version,
            "latency_ms": float(self.latency_ms),
            "door_status": self.door_status.value if self.door_status else None,
            "door_at": self.door_at.isoformat() if self.door_at else None,
            "door_rtt_ms": None if self.door_rtt_ms is None else float(self.door_rtt_ms),
            "door_reason": self.door_reason.value if self.door_reason else None,
            "snapshot_path": self.snapshot_path,
            "reviewed": review is not None,
            "review_label": review.true_label.value if review and review.true_label else None,
            "false_positive": bool(review and review.false_positive),
            "pinned": self.pinned,
        }
