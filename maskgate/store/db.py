"""Engines for SQLite (WAL, the default) and PostgreSQL, with clear errors for bad URLs."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from maskgate.config import database_url_problem, mask_url


class StoreError(RuntimeError):
    """The database cannot be used; the message says which one and why."""


class DatabaseUrlError(StoreError):
    """The database URL is malformed or names an unsupported database."""


class DatabaseUnavailable(StoreError):
    """The database did not answer."""


def parse_database_url(url: str) -> URL:
    """`url` parsed and normalised: PostgreSQL always through psycopg 3.

    The check is the config's own (`database_url` is refused when loaded); this is for URLs that
    did not come through it.
    """
    problem = database_url_problem(url)
    if problem is not None:
        raise DatabaseUrlError(problem)
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    return parsed


# A connection whose peer vanished (a firewall or NAT dropping an idle connection overnight, a
# database host gone) must fail in seconds, not after the ~15 minutes of TCP retransmits: the
# spool forwarder would report the database up meanwhile, and an agent without a spool would be
# stuck in it. Keepalives find a silent idle peer; tcp_user_timeout bounds unacknowledged sends.
# No statement timeout: a migration may rightly run for minutes.
POSTGRES_CONNECT_ARGS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,  # milliseconds
}


def make_engine(url: str) -> Engine:
    """An engine for `url`. SQLite files get their folder created, WAL and a busy timeout."""
    parsed = parse_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        return create_engine(parsed, pool_pre_ping=True, connect_args=POSTGRES_CONNECT_ARGS)
    except (NoSuchModuleError, ArgumentError) as exc:
        raise DatabaseUrlError(f"cannot use database URL {_shown(url)!r}: {exc}") from None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the dashboard read while the agent writes. FULL syncs the WAL on every commit:
    # the door command goes out right after its event commits, so a power loss must not lose a
    # committed event (NORMAL only survives application crashes). One fdatasync per commit is
    # nothing at a few events a minute.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def check_connection(engine: Engine) -> None:
    """Raise :class:`DatabaseUnavailable` with the (password-masked) URL if the database is unreachable."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to database {_shown(engine.url)}: {error_reason(exc)}"
        ) from None


def database_answers(engine: Engine) -> bool:
    """Whether the database answers ``SELECT 1`` (health checks); why not is logged, never raised."""
    try:
        check_connection(engine)
    except DatabaseUnavailable as exc:
        logging.getLogger(__name__).warning("health: %s", exc)
        return False
    return True


def error_reason(exc: BaseException) -> str:
    """The first line of the driver's own message: what a log line needs, without SQL or traceback."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _shown(url: str | URL) -> str:
    """`url` fit for a log line or an error message: its password masked."""
    return mask_url(url.render_as_string(hide_password=False) if isinstance(url, URL) else url)
