"""Fixtures shared by the whole suite: real databases (SQLite and PostgreSQL), events, configs.

PostgreSQL tests create a fresh database per test on the server named by
MASKGATE_TEST_POSTGRES_URL (default: the local `test` database as `postgres`), so tests
never see each other's rows. `.ci/run` starts the server when it is not running.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from maskgate.core import Action, Event, Label, utcnow
from maskgate.modelcard import load_card, write_card
from maskgate.store import EventStore, make_engine, migrate

ROOT = Path(__file__).parents[1]
DEFAULT_MODEL = ROOT / "models" / "default"

POSTGRES_ADMIN_URL = os.environ.get(
    "MASKGATE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def copy_model(dest: Path, version: str, labels: tuple[Label, ...] | None = None) -> Path:
    """The shipped model copied to `dest` as `version`; with `labels` reordered, a deliberately bad one."""
    dest.mkdir(parents=True)
    for file in DEFAULT_MODEL.iterdir():
        if file.is_file():
            shutil.copy(file, dest / file.name)
    card = load_card(dest)
    write_card(dest, replace(card, version=version, labels=labels or card.labels))
    return dest


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see no MASKGATE_* settings from the developer's shell (test settings excepted)."""
    for name in list(os.environ):
        if name.startswith("MASKGATE_") and not name.startswith("MASKGATE_TEST_"):
            monkeypatch.delenv(name)


def _admin_engine() -> Engine:
    return create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture
def prefix() -> Iterator[str]:
    """An MQTT topic prefix of this test's own on the shared broker; its retained messages go after."""
    from tests.gate.comms.brokers import SYSTEM_PORT, Spy, clear_retained, port_open, wait_until

    name = f"mgtest-{uuid.uuid4().hex[:10]}"
    yield name
    if port_open(SYSTEM_PORT):
        spy = Spy(SYSTEM_PORT, [f"{name}/#"])
        wait_until(lambda: False, timeout=0.2)
        retained = {m.topic for m in spy.messages if m.retain and m.payload}
        spy.close()
        clear_retained(SYSTEM_PORT, retained)


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    name = f"maskgate_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'maskgate.sqlite'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database: once on SQLite, once on the real PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def migrated_engine(engine: Engine) -> Engine:
    migrate.upgrade(engine)
    return engine


@pytest.fixture
def store(migrated_engine: Engine) -> EventStore:
    return EventStore(migrated_engine)


EventFactory = Callable[..., Event]

_PROBABILITIES = {
    Label.WITH_MASK: {Label.WITH_MASK: 0.9, Label.WITHOUT_MASK: 0.06, Label.IMPROPER_MASK: 0.04},
    Label.WITHOUT_MASK: {Label.WITH_MASK: 0.05, Label.WITHOUT_MASK: 0.92, Label.IMPROPER_MASK: 0.03},
    Label.IMPROPER_MASK: {Label.WITH_MASK: 0.2, Label.WITHOUT_MASK: 0.1, Label.IMPROPER_MASK: 0.7},
}
_ACTIONS = {Label.WITH_MASK: Action.ALLOW, Label.WITHOUT_MASK: Action.DENY, Label.IMPROPER_MASK: Action.WARN}


@pytest.fixture
def make_event() -> EventFactory:
    """Build a real Event; each call is one second older than the last unless told otherwise."""
    start = utcnow().replace(microsecond=0)
    counter = iter(range(1_000_000))

    def factory(
        label: Label = Label.WITH_MASK,
        gate_id: str = "gate-1",
        occurred_at: datetime | None = None,
        **overrides,
    ) -> Event:
        n = next(counter)
        probabilities = _PROBABILITIES[label]
        fields = {
            "event_id": uuid.uuid4(),
            "gate_id": gate_id,
            "track_id": n,
            "occurred_at": occurred_at or start - timedelta(seconds=n),
            "label": label,
            "action": _ACTIONS[label],
            "confidence": probabilities[label],
            "probabilities": probabilities,
            "model_version": "test-1",
            "latency_ms": 120.0 + n,
        }
        fields.update(overrides)
        return Event(**fields)

    return factory
