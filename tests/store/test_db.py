"""Engines and their errors: malformed, unsupported and unreachable databases."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from maskgate.store import DatabaseUnavailable, DatabaseUrlError, make_engine
from maskgate.store.db import check_connection


@pytest.mark.parametrize("url", ["nonsense", "://nohost", ""])
def test_malformed_url(url):
    with pytest.raises(DatabaseUrlError, match="malformed database URL"):
        make_engine(url)


def test_unsupported_database():
    with pytest.raises(DatabaseUrlError, match="unsupported database 'oracle'"):
        make_engine("oracle://scott:tiger@db/orcl")


def test_unreachable_postgres_names_it_and_hides_the_password():
    engine = make_engine("postgresql://gate:hunter2@127.0.0.1:1/maskgate")
    with pytest.raises(DatabaseUnavailable) as caught:
        check_connection(engine)
    message = str(caught.value)
    assert "127.0.0.1:1/maskgate" in message and "hunter2" not in message


def test_sqlite_uses_wal_and_creates_its_folder(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'deep' / 'er' / 'db.sqlite'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    assert (tmp_path / "deep" / "er" / "db.sqlite").exists()


def test_sqlite_syncs_every_commit(tmp_path):
    """FULL: a committed event (its door command goes out right after) survives a power loss."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # 0 OFF, 1 NORMAL, 2 FULL


@pytest.mark.integration
def test_postgres_urls_use_psycopg3(postgresql_url):
    engine = make_engine(postgresql_url.replace("postgresql+psycopg://", "postgresql://"))
    assert engine.dialect.driver == "psycopg"
    check_connection(engine)


@pytest.mark.integration
def test_a_postgres_connection_gives_up_on_a_silent_peer_in_seconds(postgresql_url):
    """Keepalives and a TCP user timeout: a connection dropped by a firewall overnight fails fast
    instead of hanging the forwarder (or an agent without a spool) for the minutes TCP retries."""
    engine = make_engine(postgresql_url)
    connection = engine.raw_connection()
    try:
        dsn = dict(item.split("=", 1) for item in connection.driver_connection.info.dsn.split())
    finally:
        connection.close()
    assert {key: dsn.get(key) for key in ("keepalives", "keepalives_idle", "tcp_user_timeout")} == {
        "keepalives": "1",
        "keepalives_idle": "10",
        "tcp_user_timeout": "15000",
    }
