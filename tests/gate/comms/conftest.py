"""Fixtures for the MQTT tests: a spy on this test's topic prefix (the prefix itself: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gate.comms.brokers import SYSTEM_PORT, Spy


@pytest.fixture
def spy(prefix: str) -> Iterator[Spy]:
    """Everything published under this test's prefix, as a plain MQTT client sees it."""
    watcher = Spy(SYSTEM_PORT, [f"{prefix}/#"])
    yield watcher
    watcher.close()
