"""The SQL store: engines, tables, migrations and the repositories the other parts use."""

from maskgate.store.db import DatabaseUnavailable, DatabaseUrlError, StoreError, make_engine
from maskgate.store.events import CountRow, EventFilter, EventPage, EventStore, Gate, InvalidCursorError
from maskgate.store.migrate import SchemaError
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
    "SchemaError",
    "StoreError",
    "User",
    "UserError",
    "UserStore",
    "make_engine",
]
