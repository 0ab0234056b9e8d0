"""Dashboard fixtures: an app on each database, signed-in clients for both roles, a fake clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from maskgate.config import Config, DashboardConfig, PathsConfig
from maskgate.core import utcnow
from maskgate.dashboard.app import SIGNED_IN_AT, create_app, services
from maskgate.dashboard.security import CSRF_HEADER, LoginThrottle
from maskgate.store import UserStore, make_engine

SECRET = "test-secret-key-0123456789abcdef"
PASSWORD = "correct horse battery"
DEAD_DATABASE_URL = "postgresql://gate@127.0.0.1:1/maskgate"  # nothing listens there: a database that is down


def dashboard_config(database_url: str, tmp_path: Path, **dashboard) -> Config:
    return Config(
        database_url=database_url,
        paths=PathsConfig(models=tmp_path / "models", snapshots=tmp_path / "snapshots"),
        dashboard=DashboardConfig(secret_key=SECRET, secure_cookies=False, **dashboard),
    )


class Clock:
    """A settable wall clock for pages that show ages; noon UTC today, so "today" never straddles midnight."""

    def __init__(self) -> None:
        self.now = datetime.combine(utcnow().date(), time(12), UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def config(database_url: str, tmp_path: Path) -> Config:
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "models").mkdir()
    return dashboard_config(database_url, tmp_path)


@pytest.fixture
def users(migrated_engine) -> UserStore:
    users = UserStore(migrated_engine)
    users.add("alice", PASSWORD, "admin")
    users.add("victor", PASSWORD, "viewer")
    return users


@pytest.fixture
def app(config: Config, migrated_engine, users, clock) -> Iterator[Flask]:
    app = create_app(config, engine=migrated_engine, clock=clock, throttle=LoginThrottle())
    app.config["TESTING"] = True
    yield app
    services(app).scheduler.shutdown()


@pytest.fixture
def dead_engine() -> Iterator[Engine]:
    engine = make_engine(DEAD_DATABASE_URL)
    yield engine
    engine.dispose()


@pytest.fixture
def dead_app(tmp_path: Path, dead_engine: Engine, clock) -> Iterator[Flask]:
    """The dashboard over a database that is down."""
    app = create_app(dashboard_config(DEAD_DATABASE_URL, tmp_path), engine=dead_engine, clock=clock)
    app.config["TESTING"] = True
    yield app
    services(app).scheduler.shutdown()


@pytest.fixture
def store(app):
    """The app's EventStore (same database as the app)."""
    return services(app).events


@dataclass
class Session:
    """A test client signed in as one user, that sends the CSRF token with every state change."""

    client: FlaskClient
    csrf: str

    def get(self, url: str, **kwargs):
        return self.client.get(url, **kwargs)

    def post(self, url: str, data: dict | None = None, **kwargs):
        return self.client.post(url, data={"csrf_token": self.csrf, **(data or {})}, **kwargs)

    def api_post(self, url: str, json: object | None = None, **kwargs):
        headers = {CSRF_HEADER: self.csrf, **kwargs.pop("headers", {})}
        return self.client.post(url, json=json if json is not None else {}, headers=headers, **kwargs)


def signed_in(app: Flask, username: str, at: datetime | None = None) -> Session:
    """A client whose session says `username` signed in (now by the app's clock, or `at`).

    The sign-in form has its own tests.
    """
    client = app.test_client()
    token = uuid.uuid4().hex
    with client.session_transaction() as session:
        session["user"] = username
        session["csrf"] = token
        session[SIGNED_IN_AT] = (at or services(app).clock()).timestamp()
    return Session(client, token)


@pytest.fixture
def admin(app) -> Session:
    return signed_in(app, "alice")


@pytest.fixture
def viewer(app) -> Session:
    return signed_in(app, "victor")


@pytest.fixture
def anonymous(app) -> FlaskClient:
    return app.test_client()
