"""The SQL store: engines, tables, migrations and the repositories the other parts use."""

from maskgate.store.db import DatabaseUnavailable, DatabaseUrlError, StoreError, make_engine
from maskgate.store.events import (
    CountRow,
    EventFilter,
    EventPage,
    EventStore,
    Gate,
    InvalidCursorError,
    Purged,
)
from maskgate.store.migrate import SchemaError
from maskgate.store.outbox import Outbox, OutboxCounts, OutboxKind, OutboxMessage, OutgoingMessage
from maskgate.store.registry import (
    ModelRegistry,
    ModelStatus,
    ModelVersion,
    RegistryError,
    RunStatus,
    RunTrigger,
    TrainingRun,
    TrainingRuns,
)
from maskgate.store.users import User, UserError, UserStore

__all__ = [
    "CountRow",
    "DatabaseUnavailable",
    "DatabaseUrlError",
    "EventFilter",
    "EventPage",
    "EventStore",
    "Gate",
    "InvalidCursorError",
    "ModelRegistry",
    "ModelStatus",
    "ModelVersion",
    "Outbox",
    "OutboxCounts",
    "OutboxKind",
    "OutboxMessage",
    "OutgoingMessage",
    "Purged",
    "RegistryError",
    "RunStatus",
    "RunTrigger",
    "SchemaError",
    "StoreError",
    "TrainingRun",
    "TrainingRuns",
    "User",
    "UserError",
    "UserStore",
    "make_engine",
]
