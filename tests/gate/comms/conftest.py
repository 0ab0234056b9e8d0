"""Fixtures for the MQTT tests: a private topic prefix on the shared broker, configs, a spy."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.gate.comms.brokers import SYSTEM_PORT, Spy, clear_retained, port_open, wait_until


@pytest.fixture
def prefix() -> Iterator[str]:
    """A topic prefix of this test's own on the shared broker; its retained messages are removed after."""
    name = f"mgtest-{uuid.uuid4().hex[:10]}"
    yield name
    if port_open(SYSTEM_PORT):
        spy = Spy(SYSTEM_PORT, [f"{name}/#"])
        wait_until(lambda: False, timeout=0.2)
        retained = {m.topic for m in spy.messages if m.retain and m.payload}
        spy.close()
        clear_retained(SYSTEM_PORT, retained)


@pytest.fixture
def spy(prefix: str) -> Iterator[Spy]:
    """Everything published under this test's prefix, as a plain MQTT client sees it."""
    watcher = Spy(SYSTEM_PORT, [f"{prefix}/#"])
    yield watcher
    watcher.close()
