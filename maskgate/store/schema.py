"""SQLAlchemy 2 tables. Alembic migrations (``migrations/``) are the only way they change."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from maskgate.const import MODEL_STATUSES, TRAINING_RUN_STATUSES, USER_ROLES
from maskgate.core import Action, DoorStatus, Label

# Named constraints, so that SQLite batch migrations can drop and recreate them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which keeps no zone) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: maskgate stores timezone-aware UTC only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _one_of(column: str, values: Any) -> CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=f"{column}_valid")


# Written as SQLAlchemy renders `incident.is_(True)` on each database, so that each planner
# sees the queries' conditions imply the index's.
OPEN_INCIDENT_WHERE = {
    "postgresql": "incident IS true AND reviewed_at IS NULL",
    "sqlite": "incident IS 1 AND reviewed_at IS NULL",
}
REVIEWED_WHERE = "reviewed_at IS NOT NULL"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class GateRow(Base):
    __tablename__ = "gates"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    availability: Mapped[str | None] = mapped_column(String(16))  # online / offline / stopped
    fps: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(64))


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (
        _one_of("label", [label.value for label in Label]),
        _one_of("action", [action.value for action in Action]),
        _one_of("review_label", [label.value for label in Label]),
        _one_of("door_status", [status.value for status in DoorStatus]),
        # Every listing is newest first with the id as tie-break (keyset pagination),
        # optionally filtered by one of these columns.
        Index("ix_events_occurred", "occurred_at", "id"),
        Index("ix_events_gate_occurred", "gate_id", "occurred_at", "id"),
        Index("ix_events_label_occurred", "label", "occurred_at", "id"),
        Index("ix_events_action_occurred", "action", "occurred_at", "id"),
        Index("ix_events_incident_occurred", "incident", "occurred_at", "id"),
        # Partial indexes (migration 0002), tiny once staff keep up with reviews: the open
        # incident list and count, and the reviewed filter, would otherwise walk every
        # reviewed incident. Leading with `incident` makes PostgreSQL prefer the small one.
        Index(
            "ix_events_open_incident_occurred",
            "incident",
            "occurred_at",
            "id",
            postgresql_where=text(OPEN_INCIDENT_WHERE["postgresql"]),
            sqlite_where=text(OPEN_INCIDENT_WHERE["sqlite"]),
        ),
        Index(
            "ix_events_reviewed_occurred",
            "occurred_at",
            "id",
            postgresql_where=text(REVIEWED_WHERE),
            sqlite_where=text(REVIEWED_WHERE),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    gate_id: Mapped[str] = mapped_column(ForeignKey("gates.id"))
    track_id: Mapped[int] = mapped_column(Integer)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    label: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(8))
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    model_version: Mapped[str] = mapped_column(String(64))
    latency_ms: Mapped[float] = mapped_column(Float)
    door_status: Mapped[str | None] = mapped_column(String(16))
    door_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    door_rtt_ms: Mapped[float | None] = mapped_column(Float)
    # The controller's reason for its ack (core.AckReason values, validated where the ack is
    # parsed); no CHECK, so that a newer gate sharing the database may store a reason added later.
    door_reason: Mapped[str | None] = mapped_column(String(16))
    snapshot_path: Mapped[str | None] = mapped_column(String(512))
    # Stored rather than computed in queries so that the incident list has an index.
    incident: Mapped[bool] = mapped_column(Boolean)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reviewed_by: Mapped[str | None] = mapped_column(String(64))
    review_label: Mapped[str | None] = mapped_column(String(16))
    false_positive: Mapped[bool] = mapped_column(Boolean, default=False)
    review_note: Mapped[str | None] = mapped_column(Text)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)  # never purged while set


class OutboxRow(Base):
    """An MQTT message stored before it is published; retried until sent or expired (DESIGN: outbox)."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "gate_id", "sent_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The gate whose link publishes the row: gates sharing a database never send each other's.
    gate_id: Mapped[str | None] = mapped_column(String(64))
    event_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # door_command / event / ...
    topic: Mapped[str] = mapped_column(String(256))
    payload: Mapped[str] = mapped_column(Text)  # the exact JSON that is published
    qos: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # never published after this
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (_one_of("status", MODEL_STATUSES),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    # card.json's sha256; NULL for versions registered before it was recorded (migration 0006)
    card_sha256: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TrainingRunRow(Base):
    __tablename__ = "training_runs"
    __table_args__ = (_one_of("status", TRAINING_RUN_STATUSES),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trigger: Mapped[str] = mapped_column(String(16))  # schedule / manual / cli
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    candidate_version: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)  # why promoted or rejected
    log: Mapped[str | None] = mapped_column(Text)


class UserRow(Base):
    __tablename__ = "users"
    __table_args__ = (_one_of("role", USER_ROLES),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Sessions signed in before this are refused: sign-out and a new password end them all.
    sessions_valid_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
