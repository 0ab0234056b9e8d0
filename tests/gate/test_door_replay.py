"""A captured door command replayed later never opens the door again (security sweep).

test_doorsim.py covers a replay the door still remembers (acked again, not acted on) and one with
other content (refused). This covers the rest: the door forgets a decision id once its command has
expired, so a replay after that must be refused as stale.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from maskgate.core import AckReason, DoorStatus
from maskgate.gate.doorsim import DoorSimulator
from tests.gate.comms.brokers import make_config
from tests.gate.test_doorsim import SECRET, Clock, command_bytes, send

pytestmark = pytest.mark.security


@pytest.mark.parametrize("later", [timedelta(seconds=10), timedelta(hours=1), timedelta(days=30)])
def test_a_captured_open_replayed_after_the_door_forgot_it_stays_shut(later):
    clock = Clock()
    door = DoorSimulator(make_config("doortest", command_secret=SECRET), "gate-1", open_s=0.0, clock=clock)
    try:
        captured = command_bytes(clock)
        assert send(door, captured).status is DoorStatus.OPENED
        clock.now += later
        send(door, command_bytes(clock))  # the door carries on, and forgets the old decision id
        ack = send(door, captured)  # remembered, it would get its old "opened" ack back (not acted on)
        assert ack.status is DoorStatus.EXPIRED and ack.reason is AckReason.STALE
        assert door.relay.openings == 2  # the first command and the fresh one; never the replay
    finally:
        door.relay.close()
