"""Schema migrations through Alembic, driven from Python (`maskgate db upgrade|downgrade|current|stamp`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

import maskgate.migrations
from maskgate.store.db import StoreError, check_connection

MIGRATIONS_DIR = Path(maskgate.migrations.__file__).parent


class SchemaError(StoreError):
    """The database's schema is not the one this maskgate expects."""


def alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = script_directory().get_current_head()
    assert head is not None, "the migrations folder has no revisions"
    return head


@contextmanager
def _alembic(engine: Engine) -> Iterator[AlembicConfig]:
    """An Alembic config bound to one open connection of `engine`, committed at the end."""
    check_connection(engine)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        try:
            yield config
        except CommandError as exc:
            raise SchemaError(str(exc)) from None


def upgrade(engine: Engine, revision: str = "head") -> None:
    with _alembic(engine) as config:
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    with _alembic(engine) as config:
        command.downgrade(config, revision)


def stamp(engine: Engine, revision: str) -> None:
    with _alembic(engine) as config:
        command.stamp(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    check_connection(engine)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the schema revision: {exc}") from None


def require_head(engine: Engine) -> None:
    """Raise :class:`SchemaError` unless the database is at this maskgate's head revision."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaError("the database has no maskgate schema yet: run `maskgate db upgrade`")
    try:
        script_directory().get_revision(current)
    except CommandError:
        raise SchemaError(
            f"the database is at revision {current!r}, which this maskgate does not know "
            f"(written by a newer version?); this version's head is {head!r}"
        ) from None
    raise SchemaError(f"the database is at revision {current!r}, not {head!r}: run `maskgate db upgrade`")
